"""parallels decoding, against qemu-img 7.2 where it is installed."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qemu_info import create, info, needs_qemu, only_our_errors, probed

from imgchain.errors import FormatError, UnsupportedFeatureError
from imgchain.formats import parallels


@needs_qemu
@pytest.mark.parametrize("cluster", ["4k", "64k", "1M"])
def test_qemu_made_images(tmp_path, cluster):
    data = create(tmp_path, "parallels", "p.hds", "10M", "-o", f"cluster_size={cluster}")
    image = parallels.decode(data)
    got = info(tmp_path / "p.hds")
    assert isinstance(got, dict) and got["format"] == "parallels"
    assert image.virtual_size == got["virtual-size"]
    # qemu-img prints neither cluster-size nor dirty-flag for parallels
    assert "cluster-size" not in got and "dirty-flag" not in got
    assert image.cluster_size is None and image.info_dirty_flag is None
    assert image.cluster_bytes == {"4k": 4096, "64k": 65536, "1M": 1 << 20}[cluster]


def _edit(data: bytes, *patches: tuple[int, str, object]) -> bytes:
    b = bytearray(data)
    for at, fmt, value in patches:
        struct.pack_into(fmt, b, at, value)
    return bytes(b)


@needs_qemu
def test_refusals_and_near_misses(tmp_path):
    data = create(tmp_path, "parallels", "p.hds", "10M")
    refused = {
        "zero tracks": (_edit(data, (28, "<I", 0)), FormatError),
        "too big cluster": (_edit(data, (28, "<I", (2**31 - 1) // 513 + 1)), FormatError),
        "catalog too large": (_edit(data, (32, "<I", 2**29)), FormatError),
        "bad extension magic": (_edit(data, (56, "<Q", 8)), FormatError),
    }
    for name, (bad, exc) in refused.items():
        assert parallels.probe(bad) == 100
        with pytest.raises(exc):
            parallels.decode(bad)
        (tmp_path / "bad.hds").write_bytes(bad)
        assert isinstance(info(tmp_path / "bad.hds"), str), name
    for name, near in {
        "version 3": _edit(data, (16, "<I", 3)),
        "magic off by one byte": _edit(data, (0, "16s", b"WithoutFreeSpacf")),
    }.items():
        assert parallels.probe(near) == 0, name
        assert probed(tmp_path, near) == "raw", name
        with pytest.raises(FormatError):
            parallels.decode(near)
        (tmp_path / "near.hds").write_bytes(near)
        assert isinstance(info(tmp_path / "near.hds", "parallels"), str)
    with pytest.raises(UnsupportedFeatureError):
        parallels.decode(_edit(data, (16, "<I", 3)))


@needs_qemu
def test_accepted_edits(tmp_path):
    data = create(tmp_path, "parallels", "p.hds", "10M")
    cases = {
        "inuse (not closed cleanly) opens read-only": (_edit(data, (44, "<I", parallels.HEADER_INUSE_MAGIC)), 10 << 20),
        "first magic keeps 32 bits of nb_sectors": (
            _edit(data, (0, "16s", parallels.HEADER_MAGIC), (36, "<Q", (1 << 32) + 20480)),
            10 << 20,
        ),
        "second magic keeps 64": (_edit(data, (36, "<Q", (1 << 32) + 20480)), ((1 << 32) + 20480) * 512),
    }
    for name, (edited, size) in cases.items():
        image = parallels.decode(edited)
        assert image.virtual_size == size, name
        (tmp_path / "e.hds").write_bytes(edited)
        got = info(tmp_path / "e.hds")
        assert isinstance(got, dict) and got["virtual-size"] == size, name
    assert parallels.decode(cases["inuse (not closed cleanly) opens read-only"][0]).dirty


def _with_extension(data: bytes, features: bytes) -> bytes:
    cluster = 1 << 20
    body = features.ljust(cluster - 24, b"\0")
    ext = struct.pack("<Q", parallels.FORMAT_EXTENSION_MAGIC) + hashlib.md5(body).digest() + body
    return _edit(data + ext, (56, "<Q", len(data) // 512))


@needs_qemu
def test_format_extension(tmp_path):
    data = create(tmp_path, "parallels", "p.hds", "10M")
    good = _with_extension(data, b"")  # the end marker at once
    assert parallels.decode(good).features == ()
    (tmp_path / "x.hds").write_bytes(good)
    assert isinstance(info(tmp_path / "x.hds"), dict)
    unknown = _with_extension(data, struct.pack("<QQII", 0x1234, 0, 0, 0))
    with pytest.raises(UnsupportedFeatureError):
        parallels.decode(unknown)
    (tmp_path / "x.hds").write_bytes(unknown)
    assert isinstance(info(tmp_path / "x.hds"), str)
    corrupt = bytearray(good)
    corrupt[len(data) + 100] ^= 1
    with pytest.raises(FormatError):
        parallels.decode(bytes(corrupt))
    (tmp_path / "x.hds").write_bytes(corrupt)
    assert isinstance(info(tmp_path / "x.hds"), str)


def test_truncation_raises_only_our_errors():
    data = struct.pack("<16sIIIIIQIIIQ", parallels.HEADER_MAGIC2, 2, 16, 20, 8, 10, 2048, 0, 0, 0, 0)
    for n in range(len(data) + 1):
        only_our_errors(parallels.decode, data[:n])


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_only_our_errors(junk):
    b = bytearray(junk.ljust(64, b"\0"))
    b[:20] = parallels.HEADER_MAGIC2 + b"\2\0\0\0"
    only_our_errors(parallels.decode, bytes(b))
