"""imgchain audit's human output in a glance (findings, then a summary of a
few lines), the backing graph on request (--graph tree, --graph dot, drawn
by Graphviz), --exclude, and the command line's help and usage errors."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import craft
import pytest

from imgchain.audit import audit, discover
from imgchain.cli import EXIT_FAIL, EXIT_OK, EXIT_USAGE, build_parser, main
from imgchain.emit.audit import dot, dot_id, human

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures"
MID = (FIXTURES / "chain/sub/mid.qcow2").read_bytes()  # qemu-made qcow2, 512-byte clusters
BASE = (FIXTURES / "chain/base.raw").read_bytes()  # qemu-made raw


def qcow2_naming(name: bytes, fmt: bytes | None = b"raw") -> bytes:
    return craft.rebacked(MID, name, fmt)


def run(capsys, *args: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's --help and usage errors
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def store(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    return tmp_path


def put(path: pathlib.Path | bytes, data: bytes) -> None:
    """Write ``data`` at ``path`` (a bytes path may hold any byte)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def clean_store(root: pathlib.Path, images: int) -> None:
    """``images`` images, all clean: 10 raw bases made by qemu-img, a third
    of the rest qcow2 overlays on them, the others overlays on those."""
    bases = 10
    mids = (images - bases) // 3
    for i in range(bases):
        put(root / f"bases/b{i}.raw", BASE)
    for i in range(mids):
        put(root / f"mid/m{i:04d}.qcow2", qcow2_naming(f"../bases/b{i % bases}.raw".encode()))
    for i in range(images - bases - mids):
        put(root / f"vm/v{i:04d}.qcow2", qcow2_naming(f"../mid/m{i % mids:04d}.qcow2".encode(), b"qcow2"))


# -- a store in a glance ------------------------------------------------------------------------


def test_a_clean_3000_image_store_audits_in_at_most_10_lines(store, capsys):
    clean_store(store / "s", 3000)
    code, out, err = run(capsys, "audit", "s")
    assert (code, err) == (EXIT_OK, "")
    lines = out.splitlines()
    assert len(lines) <= 10, out
    assert lines == [
        "formats: 2990 qcow2, 10 raw",
        "chains: 1994 (2990 backing links); the deepest has 3 layers: s/vm/v0000.qcow2",
        "nothing depends on 1994 images: s/vm/v0000.qcow2, s/vm/v0001.qcow2, s/vm/v0002.qcow2 and 1991 more",
        "3000 images; 0 errors, 0 warnings",
    ]


def test_findings_come_first_worst_first_then_the_summary(store, capsys):
    clean_store(store / "s", 40)
    put(store / "s/vm/lost.qcow2", qcow2_naming(b"gone.raw"))
    put(store / "s/vm/net.qcow2", qcow2_naming(b"nbd:evil.example:10809"))
    code, out, _ = run(capsys, "audit", "s")
    assert code == EXIT_FAIL
    blocks = out.split("\n\n")
    assert blocks[0].startswith("ERROR    s/vm/lost.qcow2\n  error    backing-missing: ")
    assert blocks[1].startswith("WARNING  s/vm/net.qcow2\n  warning  backing-network: ")
    assert blocks[2].splitlines() == [
        "formats: 32 qcow2, 10 raw",
        "chains: 22 (32 backing links); the deepest has 3 layers: s/vm/v0000.qcow2",
        "nothing depends on 22 images: s/vm/lost.qcow2, s/vm/net.qcow2, s/vm/v0000.qcow2 and 19 more",
        "42 images; 1 error, 1 warning",
    ]
    assert "Backing graph" not in out
    # With --graph tree, today's drawing comes between the findings and the summary.
    code, tree, _ = run(capsys, "audit", "--graph", "tree", "s")
    assert code == EXIT_FAIL
    drawn = tree.split("\n\n")
    assert drawn[:2] == blocks[:2] and drawn[-1] == blocks[2]
    assert drawn[2].startswith("Backing graph (42 images):\n  s/bases/b0.raw\n  └─ s/mid/m0000.qcow2\n")
    assert "  s/vm/lost.qcow2  (its backing file is missing: 's/vm/gone.raw')" in drawn[2]


def test_summary_of_images_without_backing_files_and_of_nothing():
    from imgchain.audit import AuditReport, ImageEntry

    lone = ImageEntry("a.raw", "probed", None)
    lone.format = "raw"
    broken = ImageEntry("b.qcow2", None, None)  # a header that could not be read
    assert human(AuditReport([lone, broken], [])).splitlines() == [
        "formats: 1 raw, 1 unreadable",
        "chains: none (no image has a backing file)",
        "2 images; 0 errors, 0 warnings",
    ]
    assert human(AuditReport([], [])).splitlines() == ["formats: none", "0 images; 0 errors, 0 warnings"]


# -- the backing graph in Graphviz's DOT ----------------------------------------------------------

_EDGE = re.compile(r'^  ("(?:[^"\\]|\\.)*") -> ("(?:[^"\\]|\\.)*");$')


def undot(quoted_id: str) -> str:
    """A DOT id as dot_id wrote it (quoted), back to the name."""
    return unid(quoted_id[1:-1].replace('\\"', '"'))


def unid(parsed_id: str) -> str:
    """A DOT id as Graphviz reads it, back to the name (surrogateescape)."""
    raw = re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]), parsed_id.encode("utf-8"))
    return raw.decode("utf-8", "surrogateescape")


@pytest.mark.parametrize(
    "name",
    ["plain.qcow2", 'q"uote', "back\\slash", "ends\\", "new\nline", "tab\there", "bad\udcff", "\u202etxt", "x\\x41"],
)
def test_dot_ids_are_one_printable_line_and_read_back(name):
    text = dot_id(name)
    assert text.isprintable() and text.startswith('"') and text.endswith('"')
    assert not text.endswith('\\"') or text == '"\\""'  # (no backslash before the closing quote)
    assert undot(text) == name


def hostile_store(root: pathlib.Path) -> list[bytes]:
    """A store mixing clean chains with every kind of broken link, and
    names that are not UTF-8 or hold quotes, backslashes and newlines.
    The paths (bytes) of the images in it."""
    r = os.fsencode(root)
    made = {
        b"bases/base.raw": BASE,
        b"bases/unused.raw": b"\0" * 512,
        b"vm1/mid.qcow2": qcow2_naming(b"../bases/base.raw"),
        b"vm1/top.qcow2": qcow2_naming(b"mid.qcow2", b"qcow2"),
        b"vm2/net.qcow2": qcow2_naming(b"nbd:evil.example:10809"),
        b"vm2/net2.qcow2": qcow2_naming(b"nbd:evil.example:10809"),
        b"vm2/lost.qcow2": qcow2_naming(b"../bases/deleted.raw"),
        b"vm2/shadow.qcow2": qcow2_naming(b"/etc/shadow"),
        b"vm2/fifo.qcow2": qcow2_naming(b"pipe"),
        b"vm2/loop.qcow2": qcow2_naming(b"loop.qcow2", b"qcow2"),
        b"vm2/bad.qcow2": craft.patch(craft.rebacked(MID, None), craft.QCOW2_FIELDS, version=4),
        b"vm2/unrecorded.qcow2": qcow2_naming(b"../bases/base.raw", None),
        b'odd/we"ird\\\n\xff.qcow2': qcow2_naming(b"../bases/base.raw"),
        b"odd/base\xfe.raw": b"\0" * 512,
        b"odd/on-bad-name.qcow2": qcow2_naming(b"base\xfe.raw"),
        b"odd/ends\\": qcow2_naming(b"../bases/base.raw"),
        b"odd/\x1b[2J.qcow2": qcow2_naming(b"missing \xff\n.raw"),
    }
    for rel, data in made.items():
        put(os.path.join(r, rel), data)
    os.mkfifo(os.path.join(r, b"vm2/pipe"))
    return list(made)


def test_dot_has_a_node_per_image_and_an_edge_per_backing_link(store, capsys):
    hostile_store(store / "s")
    code, out, err = run(capsys, "audit", "--output=json", "s")
    assert code == EXIT_FAIL
    doc = json.loads(out)
    images = {bytes.fromhex(i["path_hex"]) if "path_hex" in i else i["path"].encode(): i for i in doc["images"]}
    code, text, err = run(capsys, "audit", "--graph", "dot", "s")
    assert code == EXIT_FAIL
    assert err.startswith("imgchain: audit: ") and "errors" in err  # why the exit status is 1
    assert text.startswith("digraph imgchain {\n") and text.endswith("}\n")
    assert all(line.isprintable() for line in text.splitlines())
    edges = [(undot(m[1]), undot(m[2])) for m in map(_EDGE.match, text.splitlines()) if m]
    nodes = {undot(line.split(" [", 1)[0].strip()) for line in text.splitlines() if line.endswith("];")}
    nodes.discard("graph")
    nodes.discard("node")
    paths = {os.fsdecode(p) for p in images}
    assert paths <= nodes  # every image is a node, its path the id
    # One edge per backing link, from the overlay.
    links = sorted(os.fsdecode(p) for p, i in images.items() if i["backing"] is not None)
    assert sorted(overlay for overlay, _ in edges) == links
    # Where the base is an image, to that image (the JSON's dependents).
    for path, i in images.items():
        for overlay in i.get("dependents_hex") or [d.encode().hex() for d in i["dependents"]]:
            assert (os.fsdecode(bytes.fromhex(overlay)), os.fsdecode(path)) in edges
    # Bases that are no image have nodes of their own kind; two overlays on one network source share it.
    kinds = {
        "nbd:evil.example:10809": "shape=hexagon",
        "s/vm2/../bases/deleted.raw": 'label="missing\\n',
        "/etc/shadow": 'label="outside every root, not opened\\n',
        "s/vm2/pipe": 'label="not a regular file, not opened\\n',
    }
    for name, kind in kinds.items():
        (line,) = [line for line in text.splitlines() if line.startswith(f"  {dot_id(name)} [")]
        assert kind in line
    assert [base for _, base in edges].count("nbd:evil.example:10809") == 2
    # Findings colour their nodes: red for an error, yellow for a warning; clean images stay white.
    node_line = {undot(line.split(" [", 1)[0].strip()): line for line in text.splitlines() if line.endswith("];")}
    assert 'fillcolor="#f8d0d0"' in node_line["s/vm2/lost.qcow2"]
    assert 'tooltip="error: backing-missing"' in node_line["s/vm2/lost.qcow2"]
    assert 'fillcolor="#fff0b3"' in node_line["s/vm2/net.qcow2"]
    assert "fillcolor" not in node_line["s/vm1/top.qcow2"]
    assert 'label="s/vm1/top.qcow2\\nqcow2"' in node_line["s/vm1/top.qcow2"]  # labelled with its format


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed (apt-get install graphviz)")
def test_dot_renders_with_graphviz_and_graphviz_reads_the_same_graph(store, capsys):
    hostile_store(store / "s")
    clean_store(store / "s/clean", 60)
    code, text, _ = run(capsys, "audit", "--graph=dot", "s")
    assert code == EXIT_FAIL
    svg = subprocess.run(["dot", "-Tsvg"], input=text.encode(), capture_output=True, check=False, timeout=120)
    assert svg.returncode == 0 and svg.stderr == b"", svg.stderr
    assert svg.stdout.lstrip().startswith(b"<?xml") and b"</svg>" in svg.stdout
    # Graphviz's own reading: the ids and the edges are the ones written.
    parsed = subprocess.run(["dot", "-Tjson"], input=text.encode(), capture_output=True, check=True, timeout=120)
    graph = json.loads(parsed.stdout)
    names = [unid(o["name"]) for o in graph["objects"]]
    edges = [(names[e["tail"]], names[e["head"]]) for e in graph["edges"]]
    written = [(undot(m[1]), undot(m[2])) for m in map(_EDGE.match, text.splitlines()) if m]
    assert sorted(edges) == sorted(written)
    assert len(names) == len(set(names))


def test_a_dot_end_node_never_takes_an_image_s_id(store, capsys):
    """A file named like a network source (relative, in the working folder)
    is an image; the network source an overlay names is another node."""
    put(store / "nbd:evil.example:10809", BASE)
    put(store / "net.qcow2", qcow2_naming(b"nbd:evil.example:10809"))
    report = audit(["nbd:evil.example:10809", "net.qcow2"], roots=["."])
    text = dot(report)
    assert '"nbd:evil.example:10809" [label="nbd:evil.example:10809\\nraw"];' in text
    assert '"net.qcow2" -> "nbd:evil.example:10809 (network source)";' in text


def test_graph_goes_with_human_output_only(store, capsys):
    put(store / "a.raw", BASE)
    for output in ("json", "jsonl"):
        code, out, err = run(capsys, "audit", "--graph", "tree", "--output", output, "a.raw")
        assert (code, out) == (EXIT_USAGE, "")
        assert err == (
            f"imgchain: usage: --graph is for the human output, not --output {output} (the JSON has the graph "
            "as each image's dependents) (see 'imgchain audit --help')\n"
        )
    code, out, err = run(capsys, "audit", "--graph", "dot", "a.raw")
    assert (code, err) == (EXIT_OK, "")
    assert out == (
        "digraph imgchain {\n"
        '  graph [label="imgchain audit: 1 image; 0 errors, 0 warnings", labelloc=t];\n'
        '  node [shape=box, style="rounded,filled", fillcolor=white];\n'
        '  "a.raw" [label="a.raw\\nraw"];\n'
        "}\n"
    )


# -- --exclude ------------------------------------------------------------------------------------


def test_exclude_leaves_files_and_folders_out_of_the_walk(store):
    for rel in ("a.qcow2", "b.iso", "sub/c.iso", "sub/d.xml", "sub/lock", "sub/deeper/lock", "skip/e.raw", "f.raw"):
        put(store / "s" / rel, BASE)
    walked = [p for p, _ in discover(["s"], [], ["*.iso", "sub/d.xml", "lock", "skip"])]
    assert walked == ["s/a.qcow2", "s/f.raw"]
    # A pattern with a slash is matched against the path relative to the named folder only.
    assert [p for p, _ in discover(["s"], [], ["sub/*", "lock"])] == ["s/a.qcow2", "s/b.iso", "s/f.raw", "s/skip/e.raw"]
    assert [p for p, _ in discover(["s/sub"], [], ["sub/*"])] == [
        "s/sub/c.iso",
        "s/sub/d.xml",
        "s/sub/lock",
        "s/sub/deeper/lock",
    ]
    # A named file is never excluded.
    assert [p for p, _ in discover(["s/b.iso"], [], ["*.iso"])] == ["s/b.iso"]


def test_an_excluded_file_is_still_followed_when_a_chain_names_it(store, capsys):
    put(store / "s/base.img", BASE)
    put(store / "s/top.qcow2", qcow2_naming(b"base.img"))
    put(store / "s/notes.xml", b"<domain/>")
    report = audit(["s"], exclude=["*.img", "*.xml"])
    assert [(e.path, e.named) for e in report.images] == [("s/base.img", False), ("s/top.qcow2", True)]
    assert report.findings == []
    code, out, _ = run(capsys, "audit", "--exclude", "*.img", "--exclude=*.xml", "s")
    assert code == EXIT_OK
    assert out.splitlines()[0] == "formats: 1 qcow2, 1 raw"


# -- help texts and usage errors ------------------------------------------------------------------


def _commands() -> dict[str, object]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return dict(sub.choices)  # type: ignore[arg-type]


@pytest.mark.parametrize("command", ["info", "xml", "audit"])
def test_every_option_that_takes_a_value_says_its_default(command):
    from imgchain.chain import MAX_DEPTH

    parser = _commands()[command]
    for action in parser._actions:  # type: ignore[attr-defined]
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help and "default" in action.help, (command, action.option_strings)
        if action.dest == "max_depth":
            assert f"(default {MAX_DEPTH})" in action.help


@pytest.mark.parametrize("command", ["info", "xml", "audit"])
def test_help_shows_the_defaults(capsys, command):
    code, out, _ = run(capsys, command, "--help")
    assert code == EXIT_OK
    flat = " ".join(out.split())
    assert "(default 200)" in flat


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("info", "a", "b"), "imgchain: usage: unrecognized arguments: b (see 'imgchain info --help')"),
        (("audit", "a", "--frob"), "imgchain: usage: unrecognized arguments: --frob (see 'imgchain audit --help')"),
        (("xml", "a", "b"), "imgchain: usage: unrecognized arguments: b (see 'imgchain xml --help')"),
        (("info", ""), "imgchain: usage: argument IMAGE: an empty path (see 'imgchain info --help')"),
        (("audit", ""), "imgchain: usage: argument PATH: an empty path (see 'imgchain audit --help')"),
        (("audit", "a", ""), "imgchain: usage: argument PATH: an empty path (see 'imgchain audit --help')"),
        (("audit", "--root", "", "a"), "imgchain: usage: argument --root: an empty path (see 'imgchain audit --help')"),
        (
            ("audit", "--exclude", "", "a"),
            "imgchain: usage: argument --exclude: an empty pattern (see 'imgchain audit --help')",
        ),
        (("xml", ""), "imgchain: usage: argument IMAGE: an empty path (see 'imgchain xml --help')"),
        (
            ("xml", "--target", "", "a"),
            "imgchain: usage: argument --target: an empty target device (see 'imgchain xml --help')",
        ),
        (("xml", "--bus=", "a"), "imgchain: usage: argument --bus: an empty bus (see 'imgchain xml --help')"),
        (("xml", "--verify", ""), "imgchain: usage: argument --verify: an empty path (see 'imgchain xml --help')"),
        (("xml", "--mirror", "", "a"), "imgchain: usage: argument --mirror: an empty path (see 'imgchain xml --help')"),
        (
            ("audit", "--fail-on", "info", "a"),
            "imgchain: usage: argument --fail-on: invalid choice: 'info' (choose from 'warning', 'error') "
            "(see 'imgchain audit --help')",
        ),
    ],
)
def test_usage_errors_name_the_problem_and_the_subcommand_s_help(capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    put(tmp_path / "a", BASE)
    code, out, err = run(capsys, *args)
    assert (code, out) == (EXIT_USAGE, "")
    assert err == message + "\n"


def test_python_dash_m_usage_error_exits_2():
    proc = subprocess.run(
        [sys.executable, "-m", "imgchain", "info", "a", "b"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == EXIT_USAGE
    assert proc.stderr == "imgchain: usage: unrecognized arguments: b (see 'imgchain info --help')\n"


def test_dot_nodes_for_bases_that_were_not_read(store):
    put(store / "s/base.raw", BASE)
    put(store / "s/mid.qcow2", qcow2_naming(b"base.raw"))
    put(store / "s/top.qcow2", qcow2_naming(b"mid.qcow2", b"qcow2"))
    deep = dot(audit(["s/top.qcow2"], max_depth=2))
    assert '  "s/top.qcow2" -> "s/mid.qcow2";' in deep
    assert '  "s/base.raw" [shape=octagon, style=dotted, label="not read (past --max-depth)\\ns/base.raw"];' in deep
    assert '  "s/mid.qcow2" -> "s/base.raw";' in deep
    alone = dot(audit(["s/top.qcow2"], standalone=True))
    assert '  "s/mid.qcow2" [shape=octagon, style=dotted, label="not followed (--standalone)\\ns/mid.qcow2"];' in alone
    assert alone.count(" -> ") == 1
