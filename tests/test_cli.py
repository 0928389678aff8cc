"""The command line: output, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import craft
import pytest

from imgchain.cli import EXIT_FAIL, EXIT_OK, EXIT_USAGE, main
from imgchain.formats import qcow2


def run(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's --help/--version and usage errors
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def chain_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.raw").write_bytes(b"\0" * 4096)
    (tmp_path / "top.qcow2").write_bytes(
        craft.qcow2(backing=b"base.raw", extensions=[craft.ext(qcow2.EXT_BACKING_FORMAT, b"raw")])
    )
    return tmp_path


def test_json_single_and_chain(capsys, chain_dir):
    code, out, err = run(capsys, "info", "--output=json", "top.qcow2")
    assert (code, err) == (EXIT_OK, "")
    info = json.loads(out)
    assert info["filename"] == "top.qcow2"
    assert info["backing-filename-format"] == "raw"
    code, out, _ = run(capsys, "info", "--output", "json", "--backing-chain", "top.qcow2")
    assert [layer["format"] for layer in json.loads(out)] == ["qcow2", "raw"]


def test_human(capsys, chain_dir):
    code, out, _ = run(capsys, "info", "top.qcow2")
    assert code == EXIT_OK
    assert out.splitlines()[:3] == ["image: top.qcow2", "file format: qcow2", "virtual size: 1 MiB (1048576 bytes)"]
    assert "backing file: base.raw\nbacking file format: raw\n" in out


def one_line_error(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("imgchain: ")
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    "args",
    [
        ("info",),
        ("info", "--output=xml", "x"),
        ("info", "--max-depth", "0", "x"),
        ("info", "--max-depth", "many", "x"),
        ("info", "-f", "nope", "x"),
        ("frobnicate",),
        (),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(capsys, args):
    code, out, err = run(capsys, *args)
    assert code == EXIT_USAGE
    assert out == ""
    assert one_line_error(err).startswith("imgchain: usage: ")


def test_missing_file(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "info", "nope.qcow2")
    assert (code, out) == (EXIT_FAIL, "")
    assert one_line_error(err) == "imgchain: nope.qcow2: No such file or directory"


def test_missing_backing_file(capsys, chain_dir):
    (chain_dir / "base.raw").unlink()
    code, out, err = run(capsys, "info", "--backing-chain", "top.qcow2")
    assert (code, out) == (EXIT_FAIL, "")
    assert one_line_error(err) == "imgchain: base.raw: No such file or directory (backing file of 'top.qcow2')"
    # Without --backing-chain the backing file is not opened, as with qemu-img.
    assert run(capsys, "info", "top.qcow2")[0] == EXIT_OK


def test_malformed_header(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.qcow2").write_bytes(craft.patch(craft.qcow2(), craft.QCOW2_FIELDS, cluster_bits=30))
    code, _, err = run(capsys, "info", "bad.qcow2")
    assert code == EXIT_FAIL
    assert one_line_error(err) == "imgchain: bad.qcow2: qcow2: cluster_bits 30 outside 9..21 [cluster_bits @ 0x14]"


def test_loop(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.qcow2").write_bytes(craft.qcow2(backing=b"./a.qcow2"))
    code, _, err = run(capsys, "info", "--backing-chain", "a.qcow2")
    assert code == EXIT_FAIL
    assert "the chain loops" in one_line_error(err)


def test_directory_and_fifo(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.mkfifo("pipe")
    assert one_line_error(run(capsys, "info", "pipe")[2]) == "imgchain: pipe: a FIFO, not an image; not opened"
    assert "a directory" in one_line_error(run(capsys, "info", ".")[2])


def test_hostile_backing_name_cannot_drive_the_terminal(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.qcow2").write_bytes(craft.qcow2(backing=b"\x1b]0;pwned\x07\x1b[2J"))
    code, out, err = run(capsys, "info", "--backing-chain", "evil.qcow2")
    assert code == EXIT_FAIL
    assert "\x1b" not in err and "\x1b" not in out
    code, out, _ = run(capsys, "info", "evil.qcow2")
    assert code == EXIT_OK
    assert "\x1b" not in out and "\\x1b]0;pwned" in out


def test_python_dash_m_and_version(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "imgchain", "--version"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    assert proc.stdout.startswith("imgchain ")


def test_audit_of_named_paths_that_cannot_be_read_is_findings_and_exit_1(capsys, chain_dir, monkeypatch):
    """One rule for every command: a path that cannot be read exits 1; in the
    audit it is an image-unreadable finding and the other paths are audited."""
    import imgchain.audit

    os.mkfifo("pipe")
    os.mkdir("locked")
    real_scandir = os.scandir

    def scandir(path):
        if os.path.basename(os.fspath(path)) == "locked":
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(imgchain.audit.os, "scandir", scandir)
    code, out, err = run(capsys, "audit", "--output=json", "nope.qcow2", "pipe", "locked", "top.qcow2")
    assert (code, err) == (EXIT_FAIL, "")
    report = json.loads(out)
    assert [i["path"] for i in report["images"]] == ["base.raw", "top.qcow2"]
    unreadable = {f["image"]: f["message"] for f in report["findings"] if f["code"] == "image-unreadable"}
    assert set(unreadable) == {"nope.qcow2", "pipe", "locked"}
    assert "No such file or directory" in unreadable["nope.qcow2"]
    assert "Permission denied" in unreadable["locked"]
    # A folder alone, or a file alone: the same rule.
    assert run(capsys, "audit", "locked")[0] == EXIT_FAIL
    assert run(capsys, "audit", "nope.qcow2")[0] == EXIT_FAIL
    # A wrong command line is still a usage error.
    code, out, err = run(capsys, "audit", "--root", "nope", "top.qcow2")
    assert (code, out) == (EXIT_USAGE, "")
    assert one_line_error(err).startswith("imgchain: usage: ")
