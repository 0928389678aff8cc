"""imgchain audit: one test per finding code, on images made by qemu-img
(fixtures/) or crafted from them; clean chains; the backing graph; exit
codes; and hostile input that must not hurt the auditor."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import craft
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import imgchain.audit
import imgchain.probe
from imgchain import formats
from imgchain.audit import audit
from imgchain.cli import EXIT_FAIL, EXIT_OK, EXIT_USAGE, main
from imgchain.errors import FormatError
from imgchain.policy import CODES, Severity

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures"
README = pathlib.Path(__file__).parent.parent / "README.md"

MID = (FIXTURES / "chain/sub/mid.qcow2").read_bytes()  # qemu-made qcow2, 512-byte clusters
QED = (FIXTURES / "chain/over-raw.qed").read_bytes()  # qemu-made qed with the no-probe bit
PLAIN = craft.rebacked(MID, None)  # the same, with no backing file


def qcow2_naming(name: str | None, fmt: str | None = "raw") -> bytes:
    """A qemu-made qcow2 re-pointed at ``name`` (format ``fmt`` recorded)."""
    return craft.rebacked(MID, None if name is None else name.encode(), None if fmt is None else fmt.encode())


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def put(path: pathlib.Path, data: bytes) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def codes(report) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return sorted((f.code, f.image) for f in report.findings)


def only(report, code: str):  # type: ignore[no-untyped-def]
    found = [f for f in report.findings if f.code == code]
    assert len(found) == 1, report.findings
    return found[0]


# -- clean ------------------------------------------------------------------------------------


def test_qemu_made_chains_audit_clean():
    report = audit([str(FIXTURES / "chain"), str(FIXTURES / "rfc"), str(FIXTURES / "misc" / "v2.qcow2")])
    # The one exception the rules allow: qed can record no backing format but raw.
    assert [(f.code, f.severity, pathlib.Path(f.image).name) for f in report.findings] == [
        ("backing-format-unrecorded", Severity.WARNING, "over-qcow2.qed")
    ]


@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")
def test_every_qemu_made_chain_of_the_differential_cases_audits_clean(tmp_path, monkeypatch):
    import qemu_cases as qc

    expected = {"backing-format-unrecorded", "image-dirty", "image-corrupt", "external-data-file"}
    for case in qc.CASES:
        work = tmp_path / case.id
        work.mkdir()
        monkeypatch.chdir(work)
        top = qc.build_case(case, work)
        report = audit([top], roots=[str(work)])  # (some chains reach above the top's folder)
        # qemu 7.2 opens a relative data file name from its working folder, which no root can hold.
        unexpected = [
            f
            for f in report.findings
            if f.code not in expected and not (f.code == "backing-outside-root" and "data file" in f.message)
        ]
        assert unexpected == [], (case.id, unexpected)
        if not case.patches and "data_file" not in " ".join(map(str, case.commands)):
            # (qed can record no backing format but raw, and qcow v1 none at all)
            unrecordable = (".qed", ".qcow")
            assert [
                f
                for f in report.findings
                if f.code != "backing-format-unrecorded" or not f.image.endswith(unrecordable)
            ] == []


# -- one test per code --------------------------------------------------------------------------


def test_raw_disk_holding_a_qcow2_header(store):
    """OSSA-2024-002 / CVE-2008-2004: the guest wrote a qcow2 header naming a host file."""
    put(store / "guest.img", qcow2_naming("/etc/hosts"))
    report = audit(["guest.img"], "raw")
    f = only(report, "format-probe-mismatch")
    assert f.severity is Severity.ERROR
    assert f.details["would_open"] == "/etc/hosts"
    assert "declared raw by -f, but the content probes as qcow2" in f.message
    assert "would open backing file '/etc/hosts'" in f.message


def test_overlay_records_raw_for_a_qcow2(store):
    put(store / "base.img", qcow2_naming("/etc/passwd"))
    put(store / "top.qcow2", qcow2_naming("base.img", "raw"))
    f = only(audit(["top.qcow2"]), "format-probe-mismatch")
    assert f.image == "base.img" and f.chain == ("top.qcow2", "base.img")
    assert "declared raw by 'top.qcow2'" in f.message


def test_recorded_qcow2_whose_file_is_raw(store):
    put(store / "base.raw", b"\0" * 65536)
    put(store / "top.qcow2", qcow2_naming("base.raw", "qcow2"))
    f = only(audit(["top.qcow2"]), "format-probe-mismatch")
    assert "declared qcow2 by 'top.qcow2', but the content probes as raw" in f.message


def test_unrecorded_backing_format_warning_and_error(store):
    put(store / "base.raw", b"\0" * 65536)
    put(store / "over-raw.qcow2", qcow2_naming("base.raw", None))
    warning = only(audit(["over-raw.qcow2"]), "backing-format-unrecorded")
    assert warning.severity is Severity.WARNING
    put(store / "mid.qcow2", qcow2_naming("base.raw", "raw"))
    put(store / "over-mid.qcow2", qcow2_naming("mid.qcow2", None))
    error = only(audit(["over-mid.qcow2"]), "backing-format-unrecorded")
    assert error.severity is Severity.ERROR
    assert "libvirt refuses" in error.message


def test_qed_on_a_non_raw_base_is_only_a_warning():
    f = only(audit([str(FIXTURES / "chain/over-qcow2.qed")]), "backing-format-unrecorded")
    assert f.severity is Severity.WARNING
    assert "qed overlay can record no format but raw" in f.message


@pytest.mark.parametrize(
    "name",
    ["/etc/passwd", "../../../../../../../../etc/passwd", "sub/../../outside.raw"],
    ids=["abs", "dotdot", "mixed"],
)
def test_backing_outside_root(store, name, monkeypatch):
    put(store / "root/top.qcow2", qcow2_naming(name))
    put(store / "outside.raw", b"\0" * 512)
    opened = spy_open(monkeypatch)
    f = only(audit(["root/top.qcow2"], roots=["root"]), "backing-outside-root")
    assert f.image == "root/top.qcow2"
    assert all(os.path.realpath(p).startswith(str(store / "root")) for p in opened), opened


def test_innocent_name_that_is_a_symlink_to_a_host_file(store, monkeypatch):
    put(store / "root/top.qcow2", qcow2_naming("base.raw"))
    os.symlink("/etc/hosts", store / "root/base.raw")
    opened = spy_open(monkeypatch)
    report = audit(["root"], roots=["root"])
    found = {f.image: f.message for f in report.findings if f.code == "backing-outside-root"}
    assert found == {
        "root/top.qcow2": "backing file 'root/base.raw' resolves to '/etc/hosts', outside every --root; not opened",
        "root/base.raw": "the image resolves to '/etc/hosts', outside every --root; not opened",
    }
    assert not any(os.path.realpath(p) == "/etc/hosts" for p in opened)


def test_external_data_file_and_its_root_check(store):
    data = (FIXTURES / "misc/data-file.qcow2").read_bytes()
    put(store / "root/d.qcow2", data)
    f = only(audit(["root/d.qcow2"]), "external-data-file")
    assert f.details["data_file"] == "data.raw"
    evil = craft.patch(craft.rebacked(data, None), craft.QCOW2_FIELDS)  # keeps the data file extension
    evil = evil.replace(b"data.raw", b"/dev/sda", 1)
    put(store / "root/evil.qcow2", evil)
    report = audit(["root/evil.qcow2"], roots=["root"])
    assert {f.code for f in report.findings} == {"external-data-file", "backing-outside-root"}


def test_json_file_path_outside_root(store):
    name = '{"driver":"raw","file":{"driver":"file","filename":"/etc/hosts"}}'
    put(store / "root/top.qcow2", qcow2_naming(f"json:{name}", None))
    f = only(audit(["root/top.qcow2"], roots=["root"]), "backing-outside-root")
    assert f.details["target"] == "/etc/hosts"


def test_backing_network(store):
    put(store / "top.qcow2", qcow2_naming("nbd://example.org:10809/export"))
    f = only(audit(["top.qcow2"]), "backing-network")
    assert f.severity is Severity.WARNING
    assert f.chain == ("top.qcow2", "nbd://example.org:10809/export")


def test_backing_name_invalid(store):
    put(store / "top.qcow2", qcow2_naming('json:{"driver":'))
    assert only(audit(["top.qcow2"]), "backing-name-invalid").image == "top.qcow2"


def test_fifo_in_the_chain_is_reported_and_the_audit_returns(store):
    put(store / "top.qcow2", qcow2_naming("pipe"))
    os.mkfifo(store / "pipe")
    # In a child process with a time limit: opening the FIFO would block forever.
    proc = subprocess.run(
        [sys.executable, "-m", "imgchain", "audit", "--output=json", "top.qcow2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == EXIT_FAIL, proc.stderr
    found = json.loads(proc.stdout)["findings"]
    assert [(f["code"], f["target"]) for f in found] == [("backing-not-regular", "pipe")]


def test_loop_through_a_symlink(store):
    put(store / "a.qcow2", qcow2_naming("b.qcow2", "qcow2"))
    put(store / "b.qcow2", qcow2_naming("link", "qcow2"))
    os.symlink("a.qcow2", store / "link")
    report = audit(["a.qcow2"])
    assert only(report, "backing-loop").chain == ("a.qcow2", "b.qcow2", "link")


def test_self_loop_spelled_dot_slash(store):
    put(store / "x.qcow2", qcow2_naming("./x.qcow2", "qcow2"))
    assert only(audit(["x.qcow2"]), "backing-loop").image == "x.qcow2"


def test_backing_missing(store):
    put(store / "top.qcow2", qcow2_naming("gone.raw"))
    f = only(audit(["top.qcow2"]), "backing-missing")
    assert (f.image, f.details["target"]) == ("top.qcow2", "gone.raw")


def test_backing_too_deep(store):
    put(store / "0.raw", b"\0" * 512)
    put(store / "1.qcow2", qcow2_naming("0.raw", "raw"))
    put(store / "2.qcow2", qcow2_naming("1.qcow2", "qcow2"))
    assert only(audit(["2.qcow2"], max_depth=2), "backing-too-deep").image == "2.qcow2"
    assert audit(["2.qcow2"], max_depth=3).findings == []


def test_malformed_header(store):
    put(store / "bad.qcow2", craft.patch(PLAIN, craft.QCOW2_FIELDS, cluster_bits=30))
    f = only(audit(["bad.qcow2"]), "malformed-header")
    assert "cluster_bits 30" in f.message


def test_unsupported_feature(store):
    put(store / "new.qcow2", craft.patch(PLAIN, craft.QCOW2_FIELDS, incompatible_features=1 << 20))
    assert "unknown bit 20" in only(audit(["new.qcow2"]), "unsupported-feature").message


def test_image_unreadable(store):
    assert "No such file or directory" in only(audit(["gone.qcow2"]), "image-unreadable").message
    os.symlink("loop-b", store / "loop-a")
    os.symlink("loop-a", store / "loop-b")
    put(store / "top.qcow2", qcow2_naming("loop-a"))
    # (a name whose symlinks loop is a loop, not an unreadable file)
    assert "symbolic links" in only(audit(["top.qcow2"]), "backing-loop").message


def test_image_corrupt_and_dirty(store):
    put(store / "c.qcow2", craft.patch(PLAIN, craft.QCOW2_FIELDS, incompatible_features=2))
    put(store / "d.qcow2", craft.patch(PLAIN, craft.QCOW2_FIELDS, incompatible_features=1))
    put(store / "n.qed", craft.patch(QED, craft.QED_FIELDS, features=2))
    report = audit(["c.qcow2", "d.qcow2", "n.qed"])
    assert codes(report) == [("image-corrupt", "c.qcow2"), ("image-dirty", "d.qcow2"), ("image-dirty", "n.qed")]
    assert only(report, "image-corrupt").severity is Severity.ERROR


def test_every_code_is_tested_here_and_documented_in_the_readme():
    source = pathlib.Path(__file__).read_text()
    readme = README.read_text()
    for c in CODES.values():
        assert f'"{c.code}"' in source, f"no test produces {c.code}"
        row = f"| `{c.code}` | {c.severity.label} | {c.meaning} | {c.why} | {c.fix} |"
        assert row in readme, f"the README's row for {c.code} is missing or differs from imgchain.policy.CODES"


# -- stores and the backing graph ------------------------------------------------------------


#: The images build_store makes, as an audit of "." names them, sorted.
STORE_PATHS = [
    "./bases/base.raw",
    "./bases/unused.raw",
    "./vm1/mid.qcow2",
    "./vm1/top.qcow2",
    "./vm2/disk.qcow2",
    "./vm3/orphan.qcow2",
]


def build_store(root: pathlib.Path) -> None:
    put(root / "bases/base.raw", b"\0" * 65536)
    put(root / "bases/unused.raw", b"\0" * 512)
    put(root / "vm1/mid.qcow2", qcow2_naming("../bases/base.raw", "raw"))
    put(root / "vm1/top.qcow2", qcow2_naming("mid.qcow2", "qcow2"))
    put(root / "vm2/disk.qcow2", qcow2_naming("../bases/base.raw", "raw"))
    put(root / "vm3/orphan.qcow2", qcow2_naming("../bases/deleted.raw", "raw"))


def test_backing_graph_of_a_store(store, capsys):
    build_store(store)
    assert main(["audit", "--output=json", "."]) == EXIT_FAIL
    doc = json.loads(capsys.readouterr().out)
    images = {i["path"]: i for i in doc["images"]}
    assert sorted(images) == STORE_PATHS
    assert images["./bases/base.raw"]["dependents"] == ["./vm1/mid.qcow2", "./vm2/disk.qcow2"]
    assert images["./vm1/mid.qcow2"]["dependents"] == ["./vm1/top.qcow2"]
    assert images["./bases/unused.raw"]["dependents"] == []
    assert [(f["code"], f["image"]) for f in doc["findings"]] == [("backing-missing", "./vm3/orphan.qcow2")]
    assert main(["audit", "--graph", "tree", "."]) == EXIT_FAIL
    text = capsys.readouterr().out
    assert (
        "  ./bases/base.raw\n  ├─ ./vm1/mid.qcow2\n  │  └─ ./vm1/top.qcow2\n  └─ ./vm2/disk.qcow2\n"
        "  ./bases/unused.raw\n"
        "  ./vm3/orphan.qcow2  (its backing file is missing: './vm3/../bases/deleted.raw')\n"
    ) in text


def test_each_image_and_finding_once(store):
    build_store(store)
    put(store / "bases/base.raw", craft.patch(PLAIN, craft.QCOW2_FIELDS, incompatible_features=1))  # now a dirty qcow2
    report = audit(["."])
    dirty = [f for f in report.findings if f.code == "image-dirty"]
    assert len(dirty) == 1 and dirty[0].chain == ("./bases/base.raw",)


def test_exit_codes_and_fail_on(store, capsys):
    put(store / "d.qcow2", craft.patch(PLAIN, craft.QCOW2_FIELDS, incompatible_features=1))  # a warning
    assert main(["audit", "d.qcow2"]) == EXIT_FAIL
    assert main(["audit", "--fail-on", "error", "d.qcow2"]) == EXIT_OK
    assert main(["audit", str(FIXTURES / "chain/base.raw")]) == EXIT_OK
    capsys.readouterr()
    assert main(["audit", "nope"]) == EXIT_FAIL  # an unreadable named path is a finding, not a usage error
    out = capsys.readouterr().out
    assert "image-unreadable: cannot be read: No such file or directory" in out
    assert main(["audit", "--root", "nope", "d.qcow2"]) == EXIT_USAGE
    assert capsys.readouterr().err.startswith("imgchain: usage: --root 'nope' is not a directory")


def test_audit_needs_a_path(capsys):
    with pytest.raises(SystemExit) as e:
        main(["audit"])
    assert e.value.code == EXIT_USAGE


def audit_in_child(*args: str) -> set[tuple[str, str]]:
    """Run the audit in a child process with a time limit (a FIFO opened by
    mistake would block forever); it must exit 1.  (code, image name) pairs."""
    proc = subprocess.run(
        [sys.executable, "-m", "imgchain", "audit", "--output=json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == EXIT_FAIL, proc.stderr
    return {(f["code"], pathlib.Path(f["image"]).name) for f in json.loads(proc.stdout)["findings"]}


def put_hostile(hostile: pathlib.Path) -> None:
    """Every hostile shape, one file each, in the folder ``hostile``."""
    put(hostile / "guest.raw", qcow2_naming("/etc/shadow"))
    put(hostile / "etc-hosts.qcow2", qcow2_naming("/etc/hosts"))
    put(hostile / "data.qcow2", (FIXTURES / "misc/data-file.qcow2").read_bytes())
    put(hostile / "traversal.qcow2", qcow2_naming("../../../../etc/passwd"))
    put(hostile / "innocent.qcow2", qcow2_naming("base.raw"))
    os.symlink("/etc/hosts", hostile / "base.raw")
    put(hostile / "fifo.qcow2", qcow2_naming("pipe"))
    os.mkfifo(hostile / "pipe")
    put(hostile / "loop.qcow2", qcow2_naming("loop.qcow2", "qcow2"))
    put(hostile / "net.qcow2", qcow2_naming("nbd:evil.example:10809"))
    put(hostile / "bad.qcow2", craft.patch(PLAIN, craft.QCOW2_FIELDS, version=4))
    put(hostile / "json.qcow2", qcow2_naming('json:{"file":{"driver":"file","filename":"/etc/shadow"}}', None))


def test_directory_of_every_hostile_case(store, capsys):
    """Every hostile shape in one store: the audit finishes, reports each, exits 1."""
    put_hostile(store / "hostile")
    found = audit_in_child("--root", "hostile", "-f", "raw", "hostile")
    assert {
        ("format-probe-mismatch", "guest.raw"),
        ("format-probe-mismatch", "etc-hosts.qcow2"),
        ("format-probe-mismatch", "data.qcow2"),
    } <= found
    # Declared raw, none of them is followed; read as what they are, every shape shows:
    found = audit_in_child("--root", "hostile", "hostile")
    assert {
        ("backing-outside-root", "guest.raw"),
        ("backing-outside-root", "etc-hosts.qcow2"),
        ("external-data-file", "data.qcow2"),
        ("backing-outside-root", "traversal.qcow2"),
        ("backing-outside-root", "innocent.qcow2"),
        ("backing-outside-root", "base.raw"),
        ("backing-not-regular", "fifo.qcow2"),
        ("backing-loop", "loop.qcow2"),
        ("backing-network", "net.qcow2"),
        ("unsupported-feature", "bad.qcow2"),
        ("backing-outside-root", "json.qcow2"),
    } <= found


# -- hostile input cannot hurt the auditor --------------------------------------------------------


def spy_open(monkeypatch) -> list[str]:  # type: ignore[no-untyped-def]
    opened: list[str] = []
    real = os.open

    def spy(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(imgchain.probe.os, "open", spy)
    return opened


SAMPLES = [MID, QED, (FIXTURES / "chain/top.qcow2").read_bytes(), (FIXTURES / "misc/features.qcow2").read_bytes()]


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    sample=st.sampled_from(SAMPLES),
    edits=st.lists(st.tuples(st.integers(0, 700), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_mutated_headers_never_crash_or_escape(tmp_path_factory, monkeypatch, sample, edits):
    work = tmp_path_factory.mktemp("mut")
    data = bytearray(sample)
    for pos, value in edits:
        data[pos] = value
    put(work / "img", bytes(data))
    put(work / "base.raw", b"\0" * 512)
    opened = spy_open(monkeypatch)
    report = audit([str(work)], roots=[str(work)])
    assert all(os.path.realpath(p).startswith(str(work)) for p in opened), opened
    # If the header breaks its format's rules, the audit says so.
    try:
        module = formats.probe(bytes(data), str(work / "img"))
        module.decode(bytes(data))
    except FormatError:
        mine = {f.code for f in report.findings if f.image == str(work / "img")}
        assert mine & {"malformed-header", "unsupported-feature"}, report.findings


# -- review fixes: roots, data files, odd stores ------------------------------------------------------


def spy_looks(monkeypatch) -> list[str]:  # type: ignore[no-untyped-def]
    """Every path the audit stats, lstats, reads a link of or opens."""
    seen: list[str] = []
    for name in ("stat", "lstat", "readlink", "open"):
        real = getattr(os, name)

        def spy(path, *args, _real=real, **kwargs):  # type: ignore[no-untyped-def]
            seen.append(os.fspath(path))
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(os, name, spy)
    return seen


def test_nothing_outside_the_roots_is_even_looked_at(store, monkeypatch):
    put(store / "root/abs.qcow2", qcow2_naming("/etc/hostname"))
    put(store / "root/rel.qcow2", qcow2_naming("../../../../../../etc/passwd"))
    put(store / "root/inn.qcow2", qcow2_naming("innocent.raw"))
    os.symlink("/etc/hosts", store / "root/innocent.raw")
    os.symlink("/etc/passwd", store / "root/link.img")
    data = (FIXTURES / "misc/data-file.qcow2").read_bytes().replace(b"data.raw", b"/etc/sha", 1)
    put(store / "root/df.qcow2", data)
    root = str(store / "root")
    looked = spy_looks(monkeypatch)
    report = audit([root], roots=[root])
    outside = [p for p in looked if not (p.startswith(root) or root.startswith(p.rstrip("/") + "/") or p == "/")]
    assert outside == []
    flagged = {pathlib.Path(f.image).name for f in report.findings if f.code == "backing-outside-root"}
    assert flagged == {"abs.qcow2", "rel.qcow2", "inn.qcow2", "innocent.raw", "link.img", "df.qcow2"}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (b"etc/hostname", "relative name"),
        (b"file:/etc/shadow", "resolves to '/etc/shadow'"),
        (b'json:{"driver":"file","filename":"/etc/shadow"}', "resolves to '/etc/shadow'"),
    ],
)
def test_data_file_names_are_read_like_backing_names(store, name, message):
    data = (FIXTURES / "misc/data-file.qcow2").read_bytes()
    import imgchain.formats.qcow2 as q

    h = q.decode(data).header
    at = h.header_length
    exts = craft.ext(q.EXT_DATA_FILE, name) + b"\0" * 8
    image = bytearray(data)
    image[at:512] = exts + b"\0" * (512 - at - len(exts))
    put(store / "root/d.qcow2", bytes(image))
    report = audit(["root"], roots=["root"])
    assert message in only(report, "backing-outside-root").message


def test_network_data_file(store):
    data = (FIXTURES / "misc/data-file.qcow2").read_bytes()
    import imgchain.formats.qcow2 as q

    at = q.decode(data).header.header_length
    exts = craft.ext(q.EXT_DATA_FILE, b"nbd://evil.example/x") + b"\0" * 8
    image = bytearray(data)
    image[at:512] = exts + b"\0" * (512 - at - len(exts))
    put(store / "d.qcow2", bytes(image))
    assert "data file 'nbd://evil.example/x'" in only(audit(["d.qcow2"]), "backing-network").message


def test_a_deep_folder_tree_is_walked(store):
    deep = store / "deep"
    folder = deep
    folder.mkdir()
    for _ in range(1200):  # deeper than Python's recursion limit
        folder = folder / "a"
        folder.mkdir()
    put(folder / "disk.raw", b"\0" * 512)
    put(deep / "top.raw", b"\0" * 512)
    try:
        report = audit([str(deep)])
        assert len(report.images) == 2
        assert report.findings == []
    finally:  # bottom up: shutil.rmtree (and pytest's clean-up) recurse per level
        (folder / "disk.raw").unlink()
        while folder != deep:
            folder.rmdir()
            folder = folder.parent


def test_unreadable_folder_is_a_finding(store, monkeypatch):
    put(store / "s/ok.raw", b"\0" * 512)
    put(store / "s/locked/x.raw", b"\0" * 512)
    real = os.scandir

    def scandir(path):  # type: ignore[no-untyped-def]
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    report = audit(["s"])
    f = only(report, "image-unreadable")
    assert f.image == "s/locked" and "Permission denied" in f.message
    assert [e.path for e in report.images] == ["s/ok.raw"]


def test_dangling_symlink_in_a_store_is_reported_and_symlinked_folders_skipped(store):
    put(store / "s/ok.raw", b"\0" * 512)
    os.symlink("gone.qcow2", store / "s/lost.qcow2")
    os.symlink("/etc", store / "s/etc-link")
    report = audit(["s"], roots=["/"])
    assert [(f.code, f.image) for f in report.findings] == [("image-unreadable", "s/lost.qcow2")]


def test_graph_draws_loops(store, capsys):
    put(store / "a.qcow2", qcow2_naming("b.qcow2", "qcow2"))
    put(store / "b.qcow2", qcow2_naming("a.qcow2", "qcow2"))
    put(store / "c.qcow2", qcow2_naming("a.qcow2", "qcow2"))
    main(["audit", "--graph=tree", "."])
    out = capsys.readouterr().out
    start = out.index("Backing graph")
    graph = out[start : out.index("\n\n", start)]  # (the summary follows)
    for name in ("./a.qcow2", "./b.qcow2", "./c.qcow2"):
        assert name in graph
    assert "on a loop" in graph
    assert graph.count("./c.qcow2") == 1, graph  # drawn once, under its base on the loop
    assert "(again: the graph loops here)" in graph
    # One finding for the loop, and one for c.qcow2, whose chain runs into it.
    assert out.count("backing-loop") == 2
    assert "the chain runs into a loop" in out


def test_jsonl_streams_one_object_per_image(store, capsys):
    build_store(store)
    assert main(["audit", "--output", "jsonl", "."]) == EXIT_FAIL
    lines = capsys.readouterr().out.splitlines()
    objects = [json.loads(line) for line in lines]
    assert [o["path"] for o in objects] == STORE_PATHS
    orphan = objects[-1]
    assert [f["code"] for f in orphan["findings"]] == ["backing-missing"]
    assert objects[0]["dependents"] == ["./vm1/mid.qcow2", "./vm2/disk.qcow2"]


def test_progress_only_on_a_terminal(store, capsys, monkeypatch):
    import imgchain.cli as cli

    for i in range(cli._PROGRESS_FROM):
        put(store / f"s/{i:04d}.raw", b"")
    assert main(["audit", "--output", "json", "s"]) == EXIT_OK
    assert capsys.readouterr().err == ""  # piped: no progress display
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert main(["audit", "--output", "json", "s"]) == EXIT_OK
    err = capsys.readouterr().err
    assert "/1000" in err and "image/s" in err  # count and rate (tqdm shows the ETA as it runs)


# -- second review: one file, several paths or formats; big fans; named paths and roots ---------------


def test_one_file_reached_from_two_folders_is_followed_from_both(store):
    """z/o.qcow2 is a/o.qcow2 (a symlink): its relative backing name means
    z/base from z/, a raw-declared file holding a qcow2 header."""
    put(store / "S/a/base", b"\0" * 65536)
    put(store / "S/a/o.qcow2", qcow2_naming("base", "raw"))
    put(store / "S/z/base", qcow2_naming("/etc/hostname"))
    os.symlink("../a/o.qcow2", store / "S/z/o.qcow2")
    whole = audit(["S"])
    assert only(whole, "format-probe-mismatch").image == "S/z/base"
    # (S/z/base, read by itself, probes as qcow2 and names a host file)
    assert {f.code for f in audit(["S/z"], roots=["S"]).findings} == {"format-probe-mismatch", "backing-outside-root"}


def test_a_file_read_in_two_formats_is_one_image(store):
    put(store / "ext/base.qcow2", PLAIN)
    put(store / "ext/mid.qcow2", qcow2_naming("base.qcow2", "qcow2"))
    put(store / "s/a.qcow2", qcow2_naming("../ext/mid.qcow2", "qcow2"))
    put(store / "s/b.qcow2", qcow2_naming("../ext/mid.qcow2", None))
    report = audit(["s"], roots=["."])
    mids = [e for e in report.images if e.path.endswith("mid.qcow2")]
    assert len(mids) == 1
    assert mids[0].dependents == ["s/a.qcow2", "s/b.qcow2"]
    base = next(e for e in report.images if e.path.endswith("base.qcow2"))
    assert base.dependents == [mids[0].path]


def test_many_overlays_on_one_base_stay_linear(store):
    import time

    put(store / "s/base.raw", b"\0" * 512)
    overlay = qcow2_naming("base.raw", "raw")
    for i in range(3000):
        (store / f"s/o{i:05d}.qcow2").write_bytes(overlay)
    start = time.perf_counter()
    report = audit(["s"])
    elapsed = time.perf_counter() - start
    base = next(e for e in report.images if e.path == "s/base.raw")
    assert len(base.dependents) == 3000
    # A list-membership check made this quadratic (about 1.4 s for 10,000); linear is far below.
    assert elapsed < 5, elapsed


def test_too_deep_is_reported_once_per_chain(store):
    put(store / "c/0.raw", b"\0" * 512)
    for i in range(1, 8):
        below, fmt = (f"{i - 1}.qcow2", "qcow2") if i > 1 else ("0.raw", "raw")
        put(store / f"c/{i}.qcow2", qcow2_naming(below, fmt))
    report = audit(["c"], max_depth=3)
    assert [(f.code, f.image) for f in report.findings] == [("backing-too-deep", "c/7.qcow2")]


def test_a_named_path_outside_the_roots_is_not_looked_into(store, monkeypatch):
    put(store / "outside/disk.qcow2", PLAIN)
    (store / "root").mkdir()
    os.symlink(str(store / "outside"), store / "root/dirlink")
    looked = spy_looks(monkeypatch)
    report = audit([str(store / "root/dirlink")], roots=[str(store / "root")])
    assert [f.code for f in report.findings] == ["backing-outside-root"]
    assert not any(p.startswith(str(store / "outside")) for p in looked), looked


# -- issue 8: fail closed by default; the upload policy; one image cannot stop the audit ---------------


def test_without_root_the_named_folders_are_the_roots(store, monkeypatch):
    """`imgchain audit guest.img` with a backing file /etc/hostname: an error,
    and /etc/hostname is never opened."""
    put(store / "guest.img", qcow2_naming("/etc/hostname"))
    opened = spy_open(monkeypatch)
    f = only(audit(["guest.img"]), "backing-outside-root")
    assert f.image == "guest.img"
    assert "outside the folders named and the folders of the files named (widen them with --root DIR)" in f.message
    assert not any(os.path.realpath(p) == "/etc/hostname" for p in opened), opened
    assert main(["audit", "guest.img"]) == EXIT_FAIL


def test_without_root_a_named_folder_holds_its_chains(store):
    put(store / "s/base.qcow2", PLAIN)
    put(store / "s/sub/top.qcow2", qcow2_naming("../base.qcow2", "qcow2"))
    assert audit(["s"]).findings == []
    # the file named alone: its folder is s/sub, and its base lies above it
    assert only(audit(["s/sub/top.qcow2"]), "backing-outside-root").details["target"] == "s/sub/../base.qcow2"
    assert audit(["s/sub/top.qcow2", "s"]).findings == []


def test_root_slash_means_anywhere(store):
    put(store / "top.qcow2", qcow2_naming("/etc/hostname", "raw"))
    report = audit(["top.qcow2"], roots=["/"])
    assert [f.code for f in report.findings] == []
    assert [e.path for e in report.images] == ["/etc/hostname", "top.qcow2"]


def test_a_root_given_through_a_symlink_holds_its_own_contents(store):
    put(store / "store/base.qcow2", PLAIN)
    put(store / "store/top.qcow2", qcow2_naming("base.qcow2", "qcow2"))
    os.symlink("store", store / "s")
    report = audit(["s"], roots=["s"])
    assert report.findings == []
    assert [e.path for e in report.images] == ["s/base.qcow2", "s/top.qcow2"]
    assert main(["audit", "--root", "s", "s"]) == EXIT_OK
    assert audit([str(store / "s" / "top.qcow2")], roots=[str(store / "s")]).findings == []


def test_a_symlink_loop_inside_a_root_is_a_loop(store):
    (store / "r").mkdir()
    os.symlink("b", store / "r/a")
    os.symlink("a", store / "r/b")
    put(store / "r/top.qcow2", qcow2_naming("a", "raw"))
    report = audit(["r/top.qcow2"], roots=["r"])
    f = only(report, "backing-loop")
    assert f.image == "r/top.qcow2" and "symbolic links" in f.message
    assert not [x for x in report.findings if x.code == "backing-outside-root"]


STANDALONE_CLEAN = ("v2.qcow2", "v3.qcow2", "blank.raw", "gpt.raw", "iso.raw")


def _gpt_disk() -> bytes:
    """A raw disk with a protective MBR and a GPT header (enough for a reader to see GPT)."""
    disk = bytearray(64 * 1024)
    disk[446 + 4] = 0xEE
    disk[510:512] = b"\x55\xaa"
    disk[512:520] = b"EFI PART"
    return bytes(disk)


def _iso_disk() -> bytes:
    disk = bytearray(64 * 1024)
    disk[0x8000:0x8006] = b"\x01CD001"
    disk[0x8800:0x8806] = b"\xffCD001"
    return bytes(disk)


def test_standalone_every_named_file_is_an_error_and_nothing_is_followed(store, monkeypatch):
    put(store / "up/backed.qcow2", qcow2_naming("base.qcow2", "qcow2"))
    put(store / "up/base.qcow2", PLAIN)
    put(store / "up/missing.qcow2", qcow2_naming("/nowhere/at/all", "raw"))
    put(store / "up/df.qcow2", (FIXTURES / "misc/data-file.qcow2").read_bytes())
    opened = spy_open(monkeypatch)
    report = audit(["up/backed.qcow2", "up/missing.qcow2", "up/df.qcow2"], standalone=True)
    found = sorted(
        (f.image, f.details["kind"], f.details["target"]) for f in report.findings if f.code == "not-standalone"
    )
    assert found == [
        ("up/backed.qcow2", "backing", "base.qcow2"),
        ("up/df.qcow2", "data-file", "data.raw"),
        ("up/missing.qcow2", "backing", "/nowhere/at/all"),
    ]
    assert {f.code for f in report.findings} == {"not-standalone", "external-data-file"}
    assert not any(p.endswith("base.qcow2") for p in opened), opened
    assert main(["audit", "--standalone", "up/backed.qcow2"]) == EXIT_FAIL


def test_standalone_safe_images_stay_clean(store):
    put(store / "ok/v2.qcow2", (FIXTURES / "misc/v2.qcow2").read_bytes())
    put(store / "ok/v3.qcow2", PLAIN)
    put(store / "ok/blank.raw", b"\0" * 65536)
    put(store / "ok/gpt.raw", _gpt_disk())
    put(store / "ok/iso.raw", _iso_disk())
    report = audit(["ok"], standalone=True, formats=["raw", "qcow2"])
    assert sorted(pathlib.Path(e.path).name for e in report.images) == sorted(STANDALONE_CLEAN)
    assert report.findings == []
    assert main(["audit", "--standalone", "--formats", "raw,qcow2", "ok"]) == EXIT_OK


def test_formats_not_allowed(store):
    put(store / "s/a.qed", QED)
    put(store / "s/base.raw", b"\0" * 4096)
    put(store / "s/t.qcow2", qcow2_naming("a.qed", "qed"))
    report = audit(["s/t.qcow2"], formats=["qcow2", "raw"])
    f = only(report, "format-not-allowed")
    assert f.image == "s/a.qed" and f.details["format"] == "qed"
    assert f.chain == ("s/t.qcow2", "s/a.qed")
    assert main(["audit", "--formats", "qcow2", "s/t.qcow2"]) == EXIT_FAIL
    assert main(["audit", "--formats", "qcow2,qed,raw", "s/t.qcow2"]) == EXIT_OK


def test_formats_names_are_checked(capsys):
    with pytest.raises(SystemExit) as e:
        main(["audit", "--formats", "qcow2,nope", "x"])
    assert e.value.code == EXIT_USAGE
    assert "'nope': give formats among raw,qcow2" in capsys.readouterr().err


def test_one_image_that_crashes_the_auditor_does_not_stop_the_audit(store, monkeypatch):
    put(store / "s/a.qcow2", PLAIN)
    put(store / "s/bad.qcow2", PLAIN)
    put(store / "s/hostile.img", qcow2_naming("/etc/hostname"))
    real = imgchain.audit.read_image

    def flaky(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if path.endswith("bad.qcow2"):
            raise RecursionError("maximum recursion depth exceeded")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(imgchain.audit, "read_image", flaky)
    report = audit(["s"])
    assert codes(report) == [
        ("backing-outside-root", "s/hostile.img"),
        ("internal-error", "s/bad.qcow2"),
    ]
    f = only(report, "internal-error")
    assert "RecursionError: maximum recursion depth exceeded" in f.message


def test_polyglot_qcow2_over_an_iso_is_an_error_and_the_iso_itself_is_clean(store):
    """A qcow2 header written over the start of an ISO 9660 image: qemu opens a
    qcow2, firmware and ISO tools see an ISO."""
    iso = _iso_disk() + b"\0" * 65536
    qcow2 = craft.qcow2(cluster_bits=16)  # (qemu's default cluster: the header cluster covers 0x8000)
    assert formats.qcow2.decode(qcow2).cluster_size == 65536
    put(store / "up/iso.raw", iso)
    put(store / "up/plain.qcow2", qcow2)
    put(store / "up/poly.qcow2", qcow2[:0x8000] + iso[0x8000:0x10000] + qcow2[0x10000:])
    report = audit(["up"], standalone=True)
    f = only(report, "format-polyglot")
    assert f.image == "up/poly.qcow2" and f.details["formats"] == "qcow2,iso9660"
    assert "ISO 9660" in f.message and "0x8001" in f.message
    assert [x.code for x in report.findings] == ["format-polyglot"]


# -- issue 8: every file, folder and socket qemu would open for a name is held to the roots ------------

ESCAPES = {
    # name: the host path that qemu 7.2 opens for it (tests/test_qemu_names.py checks qemu itself)
    "nested-backing": (
        'json:{"driver":"qcow2","file":{"driver":"file","filename":"/R/base.qcow2"},'
        '"backing":{"driver":"raw","file":{"driver":"file","filename":"/etc/hostname"}}}',
        "/etc/hostname",
    ),
    "flat-backing": (
        'json:{"driver":"qcow2","file.filename":"/R/base.qcow2","backing.file.filename":"/etc/hostname"}',
        "/etc/hostname",
    ),
    "json-data-file": (
        'json:{"driver":"qcow2","file.filename":"/R/base.qcow2","data-file.filename":"/etc/hostname"}',
        "/etc/hostname",
    ),
    "fat": ("fat:/etc", "/etc"),
    "fat-rw": ("fat:rw:/etc", "/etc"),
    "vvfat-json": ('json:{"driver":"vvfat","dir":"/etc"}', "/etc"),
    "nbd-unix-uri": ("nbd+unix:///export?socket=/run/evil.sock", "/run/evil.sock"),
    "nbd-unix-colon": ("nbd:unix:/run/evil.sock", "/run/evil.sock"),
    "blkdebug": ("blkdebug:/etc/hostname:/R/base.qcow2", "/etc/hostname"),
    "blkverify": ("blkverify:/etc/hostname:/R/base.qcow2", "/etc/hostname"),
    "quorum": (
        'json:{"driver":"quorum","vote-threshold":1,"children":[{"driver":"raw","file.filename":"/etc/hostname"}]}',
        "/etc/hostname",
    ),
}


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_every_local_path_in_a_name_is_held_to_the_roots(store, monkeypatch, case):
    name, host = ESCAPES[case]
    root = store / "R"
    put(root / "base.qcow2", PLAIN)
    put(root / "top.qcow2", qcow2_naming(name.replace("/R/", f"{root}/"), None))
    opened = spy_open(monkeypatch)
    report = audit([str(root / "top.qcow2")])
    flagged = [f for f in report.findings if f.code == "backing-outside-root" and f.details.get("target") == host]
    assert flagged, report.findings
    assert flagged[0].image == str(root / "top.qcow2")
    assert not [p for p in opened if not os.path.realpath(p).startswith(str(root))], opened


def test_a_json_backing_inside_the_roots_is_read_and_its_own_chain_followed(store):
    """A json: name's own backing file, inside the roots, is an image qemu
    opens: its header is read, and a host file it names is found."""
    put(store / "R/base.qcow2", PLAIN)
    put(store / "R/hidden.qcow2", qcow2_naming("/etc/shadow", "raw"))
    name = 'json:{"driver":"qcow2","file.filename":"R/base.qcow2","backing":{"driver":"qcow2","file.filename":"%s"}}'
    put(store / "R/top.qcow2", qcow2_naming(name % (store / "R/hidden.qcow2"), None))
    report = audit(["R"])
    f = [f for f in report.findings if f.details.get("target") == "/etc/shadow"]
    assert [x.image for x in f] == ["R/hidden.qcow2"]
    # the relative json: file name is resolved by qemu against its own working folder
    rel = [x for x in report.findings if x.details.get("target") == "R/base.qcow2"]
    assert rel and "working folder" in rel[0].message


def test_names_that_cannot_be_modelled_are_errors(store):
    for i, name in enumerate(
        [
            'json:{"driver":"qcow2","file.filename":"/x","x-unknown-option":"/etc/shadow"}',
            'json:{"driver":"mystery","filename":"/etc/shadow"}',
            "json:{" + '"' + "." * 520 + 'a":1}',
            "gopher://example.org/x",
        ]
    ):
        put(store / f"s/{i}.qcow2", craft.qcow2(cluster_bits=12, backing=name.encode()))
    report = audit(["s"])
    assert codes(report) == [("backing-name-invalid", f"s/{i}.qcow2") for i in range(4)]


_HOST = "/etc/hostname"


@st.composite
def json_names(draw):  # type: ignore[no-untyped-def]
    """json: names that hide a host path somewhere qemu would open it."""
    leaf = draw(
        st.sampled_from(
            [
                {"driver": "file", "filename": _HOST},
                {"driver": "raw", "file": {"driver": "file", "filename": _HOST}},
                {"driver": "host_device", "filename": _HOST},
                {"driver": "vvfat", "dir": "/etc"},
                {"driver": "nbd", "server": {"type": "unix", "path": "/run/x.sock"}, "export": "e"},
                {"driver": "blkdebug", "config": _HOST, "image": {"driver": "file", "filename": "/R/b"}},
            ]
        )
    )
    node: object = leaf
    for _ in range(draw(st.integers(0, 3))):
        wrapper = draw(st.sampled_from(["raw", "qcow2", "throttle-ish", "copy-on-read", "quorum", "qcow2-backing"]))
        if wrapper == "quorum":
            node = {"driver": "quorum", "vote-threshold": 1, "children": [node]}
        elif wrapper == "qcow2-backing":
            node = {"driver": "qcow2", "file": {"driver": "file", "filename": "/R/b"}, "backing": node}
        elif wrapper == "throttle-ish":
            node = {"driver": "compress", "file": node}
        else:
            node = {"driver": wrapper, "file": node}
    text = json.dumps(node, separators=(",", ":"))
    if draw(st.booleans()):  # flattened spelling: "a.b.c": value

        def flat(prefix, value):  # type: ignore[no-untyped-def]
            if isinstance(value, dict):
                for k, v in value.items():
                    yield from flat(f"{prefix}{k}.", v)
            elif isinstance(value, list):
                for i, v in enumerate(value):
                    yield from flat(f"{prefix}{i}.", v)
            else:
                yield prefix[:-1], value

        text = json.dumps(dict(flat("", node)), separators=(",", ":"))
    return "json:" + text


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=json_names())
def test_every_generated_json_name_is_held_to_the_roots_or_refused(tmp_path, monkeypatch, name):
    root = tmp_path / "R"
    root.mkdir(exist_ok=True)
    (root / "b").write_bytes(PLAIN)
    top = root / "top.qcow2"
    top.write_bytes(craft.qcow2(cluster_bits=12, backing=name.replace("/R/", f"{root}/").encode()))
    opened = spy_open(monkeypatch)
    report = audit([str(top)])
    assert not [p for p in opened if not os.path.realpath(p).startswith(str(root))], (name, opened)
    held = [
        f
        for f in report.findings
        if f.code == "backing-name-invalid"
        or (f.code == "backing-outside-root" and f.details.get("target") in (_HOST, "/etc", "/run/x.sock"))
    ]
    assert held, (name, report.findings)
    monkeypatch.undo()


def test_one_store_mixing_every_hostile_class_with_clean_images(store):
    """Each hostile image is reported, each clean one stays clean, in one run."""
    s = store / "store"
    clean = {
        "base.raw": b"\0" * 65536,
        "mid.qcow2": qcow2_naming("base.raw", "raw"),
        "top.qcow2": qcow2_naming("mid.qcow2", "qcow2"),
        "plain.qcow2": PLAIN,
        "v2.qcow2": (FIXTURES / "misc/v2.qcow2").read_bytes(),
        "gpt.raw": _gpt_disk(),
        "iso.raw": _iso_disk(),
        "sub/over.qcow2": qcow2_naming("../base.raw", "raw"),
    }
    hostile = {
        "guest.raw": qcow2_naming("/etc/shadow"),  # a raw disk holding a qcow2 header ...
        "vm.qcow2": qcow2_naming("guest.raw", "raw"),  # ... declared raw by its overlay
        "abs.qcow2": qcow2_naming("/etc/hostname"),
        "dotdot.qcow2": qcow2_naming("../../../../../../etc/passwd"),
        "link.qcow2": qcow2_naming("innocent.raw"),
        "json-backing.qcow2": craft.qcow2(cluster_bits=12, backing=ESCAPES["flat-backing"][0].encode()),
        "json-data.qcow2": craft.qcow2(cluster_bits=12, backing=ESCAPES["json-data-file"][0].encode()),
        "fat.qcow2": qcow2_naming("fat:rw:/etc", None),
        "sock.qcow2": qcow2_naming("nbd:unix:/run/evil.sock", None),
        "blkdebug.qcow2": qcow2_naming("blkdebug:/etc/hostname:base.raw", None),
        "dots.qcow2": craft.qcow2(cluster_bits=12, backing=("json:{" + '"' + "." * 520 + 'a":1}').encode()),
        "unknown.qcow2": qcow2_naming('json:{"driver":"mystery","filename":"/x"}', None),
        "data-file.qcow2": (FIXTURES / "misc/data-file.qcow2").read_bytes().replace(b"data.raw", b"/dev/sda", 1),
        "poly.qcow2": craft.qcow2(cluster_bits=16)[:0x8000] + _iso_disk()[0x8000:] + b"\0" * 0x1000,
        "fifo.qcow2": qcow2_naming("pipe", "raw"),
        "loop-a.qcow2": qcow2_naming("loop-b.qcow2", "qcow2"),
        "loop-b.qcow2": qcow2_naming("loop-a.qcow2", "qcow2"),
        "missing.qcow2": qcow2_naming("gone.raw", "raw"),
    }
    for name, data in {**clean, **hostile}.items():
        put(s / name, data)
    os.symlink("/etc/hosts", s / "innocent.raw")
    os.mkfifo(s / "pipe")
    report = audit([str(s)])
    errors = {os.path.relpath(f.image, s) for f in report.findings if f.severity is Severity.ERROR}
    assert errors.isdisjoint(clean), [f for f in report.findings if os.path.relpath(f.image, s) in clean]
    # Reported under the image concerned: the raw-declared disk (not its overlay), one image of the loop.
    reported_elsewhere = {"vm.qcow2", "loop-a.qcow2"}
    assert set(hostile) - reported_elsewhere <= errors, sorted(set(hostile) - reported_elsewhere - errors)
    mismatch = only(report, "format-probe-mismatch")
    assert mismatch.chain == (str(s / "vm.qcow2"), str(s / "guest.raw"))
    assert only(report, "backing-loop").image == str(s / "loop-b.qcow2")
    # innocent.raw (a symlink to a host file) is reported too; nothing else is
    assert errors - set(hostile) == {"innocent.raw"}


# -- vmdk: extents are files the image opens -------------------------------------------------------------


def descriptor(*extents: str, parent: str | None = None, cid: bool = True) -> bytes:
    lines = ["# Disk DescriptorFile", "version=1"]
    if cid:
        lines += ["CID=12345678", "parentCID=ffffffff"]
    lines.append('createType="monolithicFlat"')
    if parent is not None:
        lines.append(f'parentFileNameHint="{parent}"')
    lines += [f'RW 2048 FLAT "{e}" 0' for e in extents]
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.parametrize(
    ("extent", "target"),
    [("/etc/shadow", "/etc/shadow"), ("../../../../../../etc/passwd", None), ("innocent.raw", None)],
    ids=["abs", "dotdot", "symlink"],
)
def test_vmdk_extent_outside_the_roots(store, monkeypatch, extent, target):
    put(store / "r/d.vmdk", descriptor(extent))
    os.symlink("/etc/hosts", store / "r/innocent.raw")
    opened = spy_open(monkeypatch)
    report = audit(["r/d.vmdk"])
    f = [x for x in report.findings if x.code == "backing-outside-root" and x.image == "r/d.vmdk"]
    assert f and "extent file" in f[0].message, report.findings
    assert not [p for p in opened if not os.path.realpath(p).startswith(str(store / "r"))], opened


def test_vmdk_extent_that_is_a_fifo_is_never_opened(store):
    put(store / "r/d.vmdk", descriptor("pipe"))
    os.mkfifo(store / "r/pipe")
    assert audit_in_child("r/d.vmdk") == {("backing-not-regular", "d.vmdk")}


def test_raw_disk_holding_a_vmdk_descriptor(store):
    """A guest writes a descriptor into its raw disk: comment lines first, CRLF."""
    text = b"# Disk DescriptorFile\r\n# made by a guest\r\nversion=1\r\nCID=1\r\nparentCID=ffffffff\r\n"
    text += b'createType="monolithicFlat"\r\nRW 2048 FLAT "/etc/shadow" 0\r\n'
    put(store / "guest.img", text + b"\0" * 4096)
    f = only(audit(["guest.img"], "raw"), "format-probe-mismatch")
    assert f.details["content"] == "vmdk"
    assert f.details["would_open_files"] == ["/etc/shadow"]
    assert "would open extent file '/etc/shadow'" in f.message
    # qemu 7.2 refuses a descriptor with no CID, after it has opened the extent: still named
    put(store / "guest2.img", descriptor("/dev/sda", cid=False) + b"\0" * 4096)
    f = only(audit(["guest2.img"], "raw"), "format-probe-mismatch")
    assert f.details["would_open_files"] == ["/dev/sda"]
    # a comment and no version line is raw to qemu, and to us
    put(store / "plain.img", b'# just a comment\nRW 2048 FLAT "/etc/shadow" 0\n' + b"\0" * 4096)
    assert audit(["plain.img"], "raw").findings == []


def test_vmdk_parent_outside_the_roots_and_standalone(store):
    put(store / "r/d.vmdk", descriptor("d-flat.vmdk", parent="/etc/hostname"))
    put(store / "r/d-flat.vmdk", b"\0" * (2048 * 512))
    report = audit(["r"])
    assert only(report, "backing-outside-root").details["target"] == "/etc/hostname"
    found = audit(["r/d.vmdk"], standalone=True)
    assert sorted((f.details["kind"], f.details["target"]) for f in found.findings if f.code == "not-standalone") == [
        ("backing", "/etc/hostname"),
        ("extent", "d-flat.vmdk"),
    ]


@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")
def test_qemu_made_vmdk_sets_audit_clean_and_the_embedded_extent_finding(store):
    for sub in ("monolithicSparse", "streamOptimized", "twoGbMaxExtentSparse"):
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "vmdk", "-o", f"subformat={sub}", f"{sub}.vmdk", "2049M"], check=True
        )
    report = audit(["."])
    assert report.findings == []
    assert {e.format for e in report.images if e.path.endswith(".vmdk")} == {"vmdk"}
    single = audit(["monolithicSparse.vmdk", "streamOptimized.vmdk"], standalone=True, formats=["vmdk"])
    assert single.findings == []
    # renamed (as a cloud stores uploads): still clean
    os.rename("monolithicSparse.vmdk", "0d9c2c1e-upload")
    assert audit(["0d9c2c1e-upload"], standalone=True).findings == []
    # the embedded descriptor rewritten to name a host file: qemu ignores it, others do not
    data = bytearray((store / "streamOptimized.vmdk").read_bytes())
    at = data.index(b'SPARSE "streamOptimized.vmdk"')
    data[at : at + 29] = b'SPARSE "/etc/shadow"         '
    put(store / "evil.vmdk", bytes(data))
    f = only(audit(["evil.vmdk"]), "vmdk-embedded-extent")
    assert "'/etc/shadow'" in f.message


def test_a_declared_format_with_its_magic_but_broken_is_malformed_not_a_mismatch(store):
    put(store / "cut.qcow2", PLAIN[:40])  # the qcow2 magic and version, cut inside the header
    put(store / "top.qcow2", qcow2_naming("cut.qcow2", "qcow2"))
    report = audit(["top.qcow2"])
    assert codes(report) == [("malformed-header", "cut.qcow2")]
    put(store / "other.img", QED)  # declared qcow2, but QED content: that is a mismatch
    put(store / "top2.qcow2", qcow2_naming("other.img", "qcow2"))
    assert only(audit(["top2.qcow2"]), "format-probe-mismatch").details["content"] == "qed"


def test_qcow_v1_records_no_backing_format(store):
    """qcow v1 cannot record its backing file's format: qemu probes it.  An
    error where the probed base has a backing file of its own."""
    qcow = craft.patch(bytearray(48), {"magic": (0, ">I"), "version": (4, ">I")}, magic=0x514649FB, version=1)
    qcow = craft.patch(
        qcow + b"base.raw" + bytes(1024),
        {
            "backing_file_offset": (8, ">Q"),
            "backing_file_size": (16, ">I"),
            "size": (24, ">Q"),
            "cluster_bits": (32, ">B"),
            "l2_bits": (33, ">B"),
            "l1_table_offset": (40, ">Q"),
        },
        backing_file_offset=48,
        backing_file_size=8,
        size=1 << 20,
        cluster_bits=12,
        l2_bits=9,
        l1_table_offset=512,
    )
    put(store / "base.raw", b"\0" * 4096)
    put(store / "top.qcow", qcow)
    f = only(audit(["top.qcow"]), "backing-format-unrecorded")
    assert f.severity is Severity.WARNING
    put(store / "base.raw", qcow2_naming("/etc/hostname", "raw"))  # now the probed base names a file of its own
    report = audit(["top.qcow"], roots=["/"])
    f = only(report, "backing-format-unrecorded")
    assert f.severity is Severity.ERROR


# -- parent locators: qemu ignores them, Hyper-V and VirtualBox follow them ------------------------------


def test_vhd_parent_locators_are_held_to_the_roots(store, tmp_path):
    import test_vpc

    data = test_vpc._differencing(test_vpc._dynamic(tmp_path))
    put(store / "r/sub/diff.vhd", data)
    put(store / "r/base.vhd", b"\0" * 512)
    report = audit(["r/sub"], roots=["r"])
    found = {(f.code, f.details["target"]) for f in report.findings}
    # ..\base.vhd from r/sub is r/base.vhd (inside); C:\vms\base.vhd is a Windows host's file;
    # file://localhost/vms/base.vhd is /vms/base.vhd (outside)
    assert found == {
        ("backing-outside-root", "C:\\vms\\base.vhd"),
        ("backing-outside-root", "/vms/base.vhd"),
    }, report.findings
    standalone = audit(["r/sub/diff.vhd"], standalone=True)
    assert {f.details["kind"] for f in standalone.findings if f.code == "not-standalone"} == {"parent-locator"}


def test_a_raw_disk_named_dmg_is_flagged(store):
    """qemu probes any file whose name ends in .dmg as dmg (by name alone) and
    refuses a raw disk so named: a trap for any host that probes."""
    put(store / "disk.dmg", b"\0" * 65536)
    f = only(audit(["disk.dmg"]), "malformed-header")
    assert f.message.startswith("dmg:")
    put(store / "disk.img", b"\0" * 65536)
    assert audit(["disk.img"]).findings == []


def test_raw_declared_disks_holding_any_format_qemu_probes(store):
    import test_vpc

    put(store / "a.img", test_vpc._dynamic(store))
    f = only(audit(["a.img"], "raw"), "format-probe-mismatch")
    assert f.details["content"] == "vpc"
