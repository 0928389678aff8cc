"""qcow (version 1) decoding, compared with qemu-img 7.2 where it is installed."""

from __future__ import annotations

import contextlib
import json
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgchain.errors import FormatError, TruncatedError, UnsupportedFeatureError
from imgchain.formats import Reference, qcow1

QEMU = shutil.which("qemu-img")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-img is not installed")


def qemu_img(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert QEMU is not None
    return subprocess.run([QEMU, *args], cwd=cwd, capture_output=True, text=True, check=False)


def qemu_info(path: Path) -> dict[str, Any] | str:
    r = qemu_img("info", "--output=json", path.name, cwd=path.parent)
    return json.loads(r.stdout) if r.returncode == 0 else r.stderr.strip()


def assert_matches_qemu(image: qcow1.QcowImage, info: dict[str, Any]) -> None:
    assert info["format"] == "qcow"
    assert image.virtual_size == info["virtual-size"]
    assert image.cluster_size == info["cluster-size"]
    assert image.backing_filename == info.get("backing-filename")
    assert "backing-filename-format" not in info and image.backing_format is None
    assert image.encrypted == info.get("encrypted", False)


def craft(*, backing: bytes | None = None, **fields: int) -> bytes:
    """A small qcow image like qemu-img makes, then ``fields`` patched."""
    values = {"magic": 0x514649FB, "version": 1, "size": 1 << 20, "cluster_bits": 12, "l2_bits": 9}
    values["l1_table_offset"] = 48 + (len(backing) if backing else 0)
    if backing:
        values.update(backing_file_offset=48, backing_file_size=len(backing))
    values.update(fields)
    out = bytearray(4096)
    fmt = {n: f for n, f in zip(qcow1.OFFSETS, "IIQIIQBBHIQ", strict=True)}
    for name, value in values.items():
        struct.pack_into(">" + fmt[name], out, qcow1.OFFSETS[name], value)
    if backing:
        out[48 : 48 + len(backing)] = backing
    return bytes(out)


CREATED = [
    ("plain", [], ["1M"]),
    ("backed by raw", ["-b", "base.raw", "-F", "raw"], []),
    ("backed by qcow", ["-b", "base.qcow", "-F", "qcow"], []),
    ("name with a space, in a folder", ["-b", "../base dir/b.raw", "-F", "raw"], []),
    ("aes", ["--object", "secret,id=s0,data=pw", "-o", "encrypt.format=aes,encrypt.key-secret=s0"], ["5M"]),
]


@needs_qemu
@pytest.mark.parametrize(("opts", "size"), [c[1:] for c in CREATED], ids=[c[0] for c in CREATED])
def test_qemu_made_images_decode_as_qemu_img_reports(tmp_path, opts, size):
    (tmp_path / "base.raw").write_bytes(bytes(1 << 20))
    (tmp_path / "base dir").mkdir()
    (tmp_path / "base dir" / "b.raw").write_bytes(bytes(1 << 20))
    assert qemu_img("create", "-q", "-f", "qcow", "base.qcow", "2M", cwd=tmp_path).returncode == 0
    (tmp_path / "sub").mkdir()
    cwd = tmp_path / "sub" if "../base dir/b.raw" in opts else tmp_path
    r = qemu_img("create", "-q", "-f", "qcow", *opts, "top.qcow", *size, cwd=cwd)
    assert r.returncode == 0, r.stderr
    data = (cwd / "top.qcow").read_bytes()
    assert qcow1.probe(data[:512]) == 100
    image = qcow1.decode(data)
    info = qemu_info(cwd / "top.qcow")
    assert isinstance(info, dict), info
    assert_matches_qemu(image, info)
    if image.backing_filename:
        assert image.references == (Reference("backing", image.backing_filename, "image", None),)


def test_fields():
    image = qcow1.decode(craft(backing=b"base.raw", mtime=7, size=1000))
    assert image.header.mtime == 7
    assert image.virtual_size == 512  # whole sectors, rounded down, as qemu
    assert image.cluster_size == 4096
    assert image.backing_filename == "base.raw"
    assert image.references == (Reference("backing", "base.raw", "image", None),)
    assert (image.format, image.dirty, image.corrupt, image.encrypted, image.data_file) == (
        "qcow",
        False,
        False,
        False,
        None,
    )
    aes = qcow1.decode(craft(crypt_method=1))
    assert aes.encrypted and aes.encryption_format == "aes"


def test_empty_backing_name_is_none():
    assert qcow1.decode(craft(backing=b"\0\0\0")).backing_filename is None
    assert qcow1.decode(craft(backing_file_offset=48, backing_file_size=0)).references == ()


REFUSALS = [
    ("version 2", {"version": 2}, UnsupportedFeatureError, "version"),
    ("size 1", {"size": 1}, FormatError, "size"),
    ("cluster_bits 8", {"cluster_bits": 8}, FormatError, "cluster_bits"),
    ("cluster_bits 17", {"cluster_bits": 17}, FormatError, "cluster_bits"),
    ("l2_bits 5", {"l2_bits": 5}, FormatError, "l2_bits"),
    ("l2_bits 14", {"l2_bits": 14}, FormatError, "l2_bits"),
    ("crypt_method 2", {"crypt_method": 2}, UnsupportedFeatureError, "crypt_method"),
    ("size near 2**64", {"size": (1 << 64) - 1}, FormatError, "size"),
    ("L1 table too large", {"size": 1 << 60}, FormatError, "size"),
    ("L1 table unreadable", {"l1_table_offset": (1 << 63) - 8}, FormatError, "l1_table_offset"),
    (
        "backing name of 1024 bytes",
        {"backing_file_offset": 48, "backing_file_size": 1024},
        FormatError,
        "backing_file_size",
    ),
]


@pytest.mark.parametrize(("fields", "exc", "field"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refusals_match_qemu(tmp_path, fields, exc, field):
    data = craft(**fields)
    with pytest.raises(exc) as e:
        qcow1.decode(data)
    assert e.value.field == field
    assert e.value.offset == qcow1.OFFSETS[field]
    assert str(e.value).startswith("qcow: ")
    if QEMU is not None:
        (tmp_path / "bad.qcow").write_bytes(data)
        info = qemu_info(tmp_path / "bad.qcow")
        assert isinstance(info, str), "qemu-img opened it"


@needs_qemu
@pytest.mark.parametrize(
    "fields", [{"padding": 1}, {"backing_file_size": 1023, "backing_file_offset": 48}, {"l2_bits": 13}]
)
def test_edits_qemu_accepts(tmp_path, fields):
    data = craft(**fields)
    (tmp_path / "ok.qcow").write_bytes(data)
    info = qemu_info(tmp_path / "ok.qcow")
    assert isinstance(info, dict), info
    assert_matches_qemu(qcow1.decode(data), info)


def test_truncated_header_is_refused_at_every_length():
    data = craft(backing=b"base.raw")
    for n in range(48 + len(b"base.raw")):
        with pytest.raises(TruncatedError):
            qcow1.decode(data[:n])


@pytest.mark.parametrize(
    ("head", "score"),
    [(b"QFI\xfb\0\0\0\1", 100), (b"QFI\xfb\0\0\0\2", 0), (b"QFI\xfb\0\0\0\3", 0), (b"QFI\xfb", 0), (b"", 0)],
)
def test_probe(head, score):
    assert qcow1.probe(head + bytes(40) if head else head) == score
    assert qcow1.sniff(head + bytes(40) if head else head) == (score > 0)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.integers(0, 100), st.integers(0, 255)), max_size=8), cut=st.integers(0, 200))
def test_mutated_headers_raise_only_our_errors(edits, cut):
    data = bytearray(craft(backing=b"base.raw"))
    for pos, value in edits:
        data[pos] = value
    with contextlib.suppress(FormatError):
        qcow1.decode(bytes(data[: max(cut, 40)]) if cut < 100 else bytes(data))
