"""No name forges output, no output is invalid, no closed stdout crashes.

Names come from headers and file systems: any bytes.  Human output escapes
every character that is not printable text (newline and CR included), so
that line structure only comes from the emitters; JSON is always valid
UTF-8; a stdout that cannot be written is one line on stderr and exit 1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import craft
import pytest

from imgchain.cli import EXIT_FAIL, EXIT_OK, main
from imgchain.emit import qemu
from imgchain.errors import name_text, quoted, shown
from imgchain.formats import qcow2

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORGED = "image: forged.qcow2"
QEMU_IMG = shutil.which("qemu-img")


def run(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def run_bytes(capsysbinary, *args: str) -> tuple[int, bytes, bytes]:
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsysbinary.readouterr()
    return code, out.out, out.err


def strings(obj: object) -> list[str]:
    """Every string (keys too) in a decoded JSON document."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in (k, *strings(v))]
    if isinstance(obj, list):
        return [s for v in obj for s in strings(v)]
    return []


def assert_plain_lines(text: str) -> None:
    """Every line printable: no control character, no escape, no CR."""
    for line in text.split("\n"):
        assert line.isprintable(), repr(line)


# -- the escaping primitives -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a\nb", "'a\\nb'"),
        ("a\rb\tc", "'a\\rb\\tc'"),
        ("\x1b[2J", "'\\x1b[2J'"),
        ("\x7f", "'\\x7f'"),
        ("a\x85b\u2028c\u202e", "'a\\u0085b\\u2028c\\u202e'"),  # NEL, LINE SEPARATOR, RTL OVERRIDE
        (os.fsdecode(b"bad\xff\xc3"), "'bad\\xff\\xc3'"),  # bytes that are not UTF-8, as bytes
        ("it's \\ odd\n", "'it\\'s \\\\ odd\\n'"),
        ("\U000e0001", "'\\U000e0001'"),
    ],
)
def test_quoted_escapes_every_character_that_is_not_printable(name, expected):
    assert quoted(name) == expected
    assert quoted(name).isprintable()
    assert name_text(name) == expected
    assert shown(name) == expected


def test_plain_names_are_left_alone():
    for name in ("top.qcow2", "dir/my disk.img", "disque-été.qcow2", "a\\b", "it's"):
        assert name_text(name) == name
    assert name_text(" spaced ") == " spaced "  # as qemu-img prints it
    assert shown(" spaced ") == "' spaced '"  # in a message, quoted so the spaces show


# -- item 1: human output --------------------------------------------------------------------

HOSTILE = [
    b"base\n" + FORGED.encode(),
    b"base\r" + FORGED.encode(),
    b"base\x1b]0;pwned\x07",
    b"base\xc2\x85" + FORGED.encode(),  # NEL
    b"base\xe2\x80\xa8" + FORGED.encode(),  # LINE SEPARATOR
    b"base\xff\n" + FORGED.encode(),
    b"tab\there",
]


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("backing", HOSTILE)
def test_info_text_never_forges_a_line(capsys, work, backing):
    (work / "evil.qcow2").write_bytes(craft.qcow2(backing=backing))
    (work / "plain.qcow2").write_bytes(craft.qcow2(backing=b"base"))
    code, out, err = run(capsys, "info", "evil.qcow2")
    assert (code, err) == (EXIT_OK, "")
    assert_plain_lines(out)
    assert not any(line.startswith("image: f") for line in out.splitlines())
    # The same lines as for a plain name, with the name quoted and escaped in its own line.
    code, plain_out, _ = run(capsys, "info", "plain.qcow2")
    name = os.fsdecode(backing)
    assert out.replace(f"backing file: {quoted(name)}\n", "backing file: base\n").replace(
        "image: evil.qcow2", "image: plain.qcow2"
    ) == plain_out.replace(f"disk size: {_disk_size(plain_out)}", f"disk size: {_disk_size(out)}")


def _disk_size(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("disk size: "))[len("disk size: ") :]


def test_info_text_escapes_a_hostile_file_name_and_backing_format(capsys, work):
    name = "evil\n\x1b[2Jforged.qcow2"
    (work / name).write_bytes(
        craft.qcow2(backing=b"base", extensions=[craft.ext(qcow2.EXT_BACKING_FORMAT, b"raw\nimage: x")])
    )
    code, out, _ = run(capsys, "info", name)
    assert code == EXIT_OK
    assert_plain_lines(out)
    assert out.startswith(f"image: {quoted(name)}\nfile format: qcow2\n")
    assert "backing file format: " + quoted("raw\nimage: x") + "\n" in out


@pytest.mark.skipif(QEMU_IMG is None, reason="qemu-img is not installed")
@pytest.mark.parametrize("backing", [b"a\nimage: fake\nb", b"c\xff\x1b[2Jd\r\t"])
def test_info_text_differs_from_qemu_img_only_in_the_escaped_name(capsys, work, backing):
    """qemu-img 7.2 prints a backing name raw, control characters and all;
    we print it quoted and escaped (README: where we differ), and every
    other byte is the same."""
    subprocess.run(
        [QEMU_IMG, "create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", "raw", "x.qcow2", "1M"], check=True
    )
    theirs = subprocess.run([QEMU_IMG, "info", "x.qcow2"], capture_output=True, check=True).stdout
    code, ours, _ = run_bytes_capsys(capsys, "info", "x.qcow2")
    assert code == EXIT_OK
    raw_line = b"backing file: " + backing + b"\n"
    assert raw_line in theirs
    escaped_line = f"backing file: {quoted(os.fsdecode(backing))}\n".encode()
    assert ours == theirs.replace(raw_line, escaped_line)


def run_bytes_capsys(capsys, *args: str) -> tuple[int, bytes, str]:
    code, out, err = run(capsys, *args)
    return code, out.encode("utf-8", "surrogateescape"), err


@pytest.mark.parametrize("backing", HOSTILE)
def test_error_lines_are_one_line(capsys, work, backing):
    (work / "evil.qcow2").write_bytes(craft.qcow2(backing=backing))
    code, out, err = run(capsys, "info", "--backing-chain", "evil.qcow2")
    assert (code, out) == (EXIT_FAIL, "")
    assert err.endswith("\n") and err.count("\n") == 1
    assert_plain_lines(err)


def test_audit_text_never_forges_a_line(capsys, work):
    store = work / "store"
    store.mkdir()
    (store / "base.raw").write_bytes(b"\0" * 4096)
    evil = "ok.qcow2\n  └─ forged.qcow2\x1b[2J"
    (store / evil).write_bytes(craft.qcow2(backing=b"base.raw"))
    (store / "missing.qcow2").write_bytes(craft.qcow2(backing=b"gone\n" + FORGED.encode()))
    code, out, err = run(capsys, "audit", "store")
    assert (code, err) == (EXIT_FAIL, "")  # a missing base, an unrecorded format
    assert_plain_lines(out)
    assert not any("forged" in line and "'" not in line for line in out.splitlines())
    assert f"store/{quoted(evil)[1:-1]}" in out


def test_xml_refuses_a_name_it_cannot_carry_in_one_line(capsys, work):
    (work / "base\nforged").write_bytes(b"\0" * 512)
    (work / "evil.qcow2").write_bytes(craft.qcow2(backing=b"base\nforged"))
    code, out, err = run(capsys, "xml", "evil.qcow2")
    assert (code, out) == (EXIT_FAIL, "")
    assert err.count("\n") == 1
    assert_plain_lines(err)
    assert "XML cannot carry" in err


def test_verify_messages_are_one_line_each(capsys, work):
    (work / "disk.raw").write_bytes(b"\0" * 4096)
    domain = work / "vm.xml"
    domain.write_text(
        "<domain><devices>"
        '<disk type="file"><driver name="qemu" type="qcow2"/><source file="'
        + str(work / "disk.raw")
        + '"/><target dev="vda&#10;vm.xml: disk vdb: matches&#13;"/></disk>'
        "</devices></domain>"
    )
    code, out, err = run(capsys, "xml", "--verify", "vm.xml")
    assert (code, err) == (EXIT_FAIL, "")
    assert_plain_lines(out)
    assert out.count("\n") == 1
    assert out.startswith("vm.xml: disk 'vda\\nvm.xml: disk vdb: matches\\r': chain layer 0: unreadable: ")


# -- item 2: JSON, always valid UTF-8 --------------------------------------------------------


@pytest.fixture
def byte_store(tmp_path, monkeypatch):
    """A store whose names are not UTF-8: an overlay named b'top\\xff.qcow2'
    on a base named b'base\\xfe.raw', and a clean file with a plain name."""
    monkeypatch.chdir(tmp_path)
    os.mkdir(b"store")
    with open(b"store/base\xfe.raw", "wb") as f:
        f.write(b"\0" * 4096)
    with open(b"store/top\xff.qcow2", "wb") as f:
        f.write(craft.qcow2(backing=b"base\xfe.raw"))  # no recorded format: a finding naming both
    (tmp_path / "store" / "plain.raw").write_bytes(b"\0" * 512)
    return tmp_path


def _check_json_names(doc: object) -> None:
    for s in strings(doc):
        s.encode("utf-8")  # no lone surrogates


@pytest.mark.parametrize("output", ["json", "jsonl"])
def test_audit_json_is_valid_utf8_and_locates_every_file(capsysbinary, byte_store, output):
    code, out, _ = run_bytes(capsysbinary, "audit", "--output", output, "store")
    assert code == EXIT_FAIL
    text = out.decode("utf-8")  # strict
    docs = [json.loads(line) for line in text.splitlines()] if output == "jsonl" else [json.loads(text)]
    for doc in docs:
        _check_json_names(doc)
    images = docs if output == "jsonl" else docs[0]["images"]
    by_path = {image["path"]: image for image in images}
    top = by_path["store/top\ufffd.qcow2"]
    assert top["path_hex"] == b"store/top\xff.qcow2".hex()
    assert os.path.isfile(bytes.fromhex(top["path_hex"]))
    assert top["backing"] == "store/base\ufffd.raw"
    assert os.path.isfile(bytes.fromhex(top["backing_hex"]))
    base = by_path["store/base\ufffd.raw"]
    assert base["dependents"] == ["store/top\ufffd.qcow2"]
    assert base["dependents_hex"] == [b"store/top\xff.qcow2".hex()]
    assert "path_hex" not in by_path["store/plain.raw"]  # only where a name is not UTF-8
    findings = [f for doc in docs for f in doc["findings"]]
    assert findings, "the unrecorded backing format is a finding"
    for f in findings:
        assert f["image_hex"] == b"store/top\xff.qcow2".hex()
        assert len(f["chain_hex"]) == len(f["chain"])


def test_info_json_gives_bytes_that_are_not_utf8_as_qemu_img_does(capsysbinary, byte_store):
    code, out, _ = run_bytes(capsysbinary, "info", "--output=json", os.fsdecode(b"store/top\xff.qcow2"))
    assert code == EXIT_OK
    info = json.loads(out.decode("utf-8"))
    assert info["filename"] == "store/top\ufffd.qcow2"
    assert info["backing-filename"] == "base\ufffd.raw"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"n\xe2\x82b", '"n\\uFFFDb"'),  # a sequence cut short: one U+FFFD, as qemu's decoder gives
        (b"n\xc0\xafz", '"n\\uFFFDz"'),  # overlong
        (b"n\xed\xa0\x80x", '"n\\uFFFDx"'),  # an encoded surrogate
        (b"n\xef\xbf\xbe", '"n\\uFFFD"'),  # a noncharacter
        (b"n\xf8\x88\x80\x80\x80y", '"n\\uFFFDy"'),  # five bytes
        (b"n\x80\x80", '"n\\uFFFD\\uFFFD"'),  # two stray continuation bytes
        (b"n\xe2\x82\xe2\x82\xac", '"n\\uFFFD\\u20AC"'),
        (b"n\xf0\x9f\x98\x80", '"n\\uD83D\\uDE00"'),
    ],
)
def test_qemu_json_replaces_bytes_as_qemu_does(raw, expected):
    assert qemu.dumps(os.fsdecode(raw)) == expected


@pytest.mark.skipif(QEMU_IMG is None, reason="qemu-img is not installed")
def test_qemu_json_of_names_that_are_not_utf8_matches_qemu_img(tmp_path):
    names = [b"n\xe2\x82b", b"n\xc0\xafz", b"n\xed\xa0\x80x", b"n\xef\xbf\xbe", b"n\xf8\x88\x80\x80\x80y", b"n\xff"]
    for raw in names:
        path = os.path.join(os.fsencode(tmp_path), raw)
        subprocess.run([QEMU_IMG, "create", "-q", "-f", "raw", path, "1K"], check=True)
        theirs = subprocess.run([QEMU_IMG, "info", "--output=json", path], capture_output=True, check=True).stdout
        line = next(line for line in theirs.decode().splitlines() if '"filename"' in line)
        assert line.strip().rstrip(",") == '"filename": ' + qemu.dumps(os.fsdecode(path))


# -- item 3: a closed stdout -----------------------------------------------------------------


def _imgchain(args: list[str], cwd, stdout_redirect: str) -> subprocess.CompletedProcess[str]:
    """Run imgchain in a shell with its stdout redirected as ``stdout_redirect`` says."""
    env = {**os.environ, "PYTHONPATH": REPO}
    script = f'exec "$0" -m imgchain "$@" {stdout_redirect}'
    return subprocess.run(
        ["sh", "-c", script, sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )


@pytest.fixture
def small(tmp_path):
    (tmp_path / "base.raw").write_bytes(b"\0" * 4096)
    (tmp_path / "top.qcow2").write_bytes(
        craft.qcow2(backing=b"base.raw", extensions=[craft.ext(qcow2.EXT_BACKING_FORMAT, b"raw")])
    )
    (tmp_path / "vm.xml").write_text(
        f'<disk type="file"><driver name="qemu" type="qcow2"/><source file="{tmp_path}/top.qcow2"/>'
        f'<backingStore type="file"><format type="raw"/><source file="{tmp_path}/base.raw"/><backingStore/>'
        '</backingStore><target dev="vda"/></disk>'
    )
    return tmp_path


COMMANDS = [
    ["info", "top.qcow2"],
    ["info", "--output=json", "--backing-chain", "top.qcow2"],
    ["audit", "."],
    ["audit", "--output=json", "."],
    ["audit", "--output=jsonl", "."],
    ["xml", "top.qcow2"],
    ["xml", "--verify", "vm.xml"],
]


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_closed_stdout_is_one_line_and_exit_1(small, args):
    proc = _imgchain(args, small, ">&-")
    assert proc.returncode == EXIT_FAIL, proc.stderr
    assert proc.stderr == "imgchain: standard output is closed; nothing done\n"


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
@pytest.mark.parametrize(
    ("redirect", "reason"),
    [("1</dev/null", "Bad file descriptor"), (">/dev/full", "No space left on device")],
    ids=["read-only", "full"],
)
def test_stdout_that_cannot_be_written_is_one_line_and_exit_1(small, args, redirect, reason):
    if redirect.endswith("/dev/full") and not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    proc = _imgchain(args, small, redirect)
    assert proc.returncode == EXIT_FAIL, proc.stderr
    assert proc.stderr == f"imgchain: cannot write to standard output: {reason}\n"


def test_a_closed_pipe_ends_quietly(small):
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "imgchain", "info", "top.qcow2"],
            cwd=small,
            env={**os.environ, "PYTHONPATH": REPO},
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (EXIT_FAIL, "")


def test_working_stdout_still_works(small):
    proc = _imgchain(["info", "top.qcow2"], small, "")
    assert (proc.returncode, proc.stderr) == (EXIT_OK, "")
    assert proc.stdout.startswith("image: top.qcow2\n")
