"""bochs, cloop and dmg: hand-crafted images that qemu-img 7.2 opens, the
near misses it calls raw, and its refusals."""

from __future__ import annotations

import base64
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qemu_info import info, needs_qemu, only_our_errors, probed

from imgchain.errors import FormatError, TruncatedError
from imgchain.formats import bochs, cloop, dmg

# -- bochs ---------------------------------------------------------------------


def bochs_image(version=0x20000, disk=10 << 20, catalog=160, extent=65536, magic=bochs.HEADER_MAGIC,
                typ=b"Redolog", sub=b"Growing", size=512 + 160 * 4) -> bytes:  # fmt: skip
    b = bytearray(size)
    b[0 : len(magic)] = magic
    b[32 : 32 + len(typ)] = typ
    b[48 : 48 + len(sub)] = sub
    struct.pack_into("<IIIII", b, 64, version, 512, catalog, 0x1000, extent)
    struct.pack_into("<Q", b, 84 if version == bochs.HEADER_V1 else 88, disk)
    return bytes(b[:size])


BOCHS_OPENED = {
    "version 2": ({}, 10 << 20),
    "version 1": ({"version": bochs.HEADER_V1}, 10 << 20),
    "odd size rounds down": ({"disk": (10 << 20) + 100}, 10 << 20),
    "catalog past the end (reads zeros)": ({"size": 100}, 10 << 20),
}


@needs_qemu
@pytest.mark.parametrize(("kw", "size"), BOCHS_OPENED.values(), ids=BOCHS_OPENED.keys())
def test_bochs_opened(tmp_path, kw, size):
    data = bochs_image(**kw)
    assert bochs.probe(data[:512]) == 100
    image = bochs.decode(data)
    (tmp_path / "b.img").write_bytes(data)
    got = info(tmp_path / "b.img")
    assert isinstance(got, dict) and got["format"] == "bochs"
    assert image.virtual_size == got["virtual-size"] == size
    assert "cluster-size" not in got and "dirty-flag" not in got and image.info_dirty_flag is None


BOCHS_NEAR = {
    "version 3": {"version": 0x30000},
    "subtype Undoable": {"sub": b"Undoable"},
    "type not NUL-terminated": {"typ": b"Redolog!"},
    "magic not NUL-terminated": {"magic": bochs.HEADER_MAGIC + b"x"},
}
BOCHS_REFUSED = {
    "catalog too small": {"catalog": 159},
    "extent 256": {"extent": 256},
    "extent 3072": {"extent": 3072},
    "extent 16 MiB": {"extent": 16 << 20, "catalog": 1},
    "catalog too large": {"catalog": 0x100001},
}


@needs_qemu
def test_bochs_near_misses_and_refusals(tmp_path):
    for name, kw in BOCHS_NEAR.items():
        data = bochs_image(**kw)
        assert bochs.probe(data) == 0, name
        assert probed(tmp_path, data) == "raw", name
        with pytest.raises(FormatError):
            bochs.decode(data)
    for name, kw in BOCHS_REFUSED.items():
        data = bochs_image(**kw)
        assert bochs.probe(data) == 100
        with pytest.raises(FormatError):
            bochs.decode(data)
        (tmp_path / "b.img").write_bytes(data)
        assert isinstance(info(tmp_path / "b.img"), str), name


# -- cloop ---------------------------------------------------------------------


def cloop_image(bs=65536, n=3, offsets=None, magic=cloop.MAGIC_V2_0, size=None, pad=300) -> bytes:
    b = bytearray(128)
    b[: len(magic)] = magic
    b += struct.pack(">II", bs, n)
    offsets = offsets if offsets is not None else [136 + 8 * (n + 1) + i * 100 for i in range(n + 1)]
    for o in offsets:
        b += struct.pack(">Q", o)
    b += bytes(pad)
    return bytes(b if size is None else b[:size])


CLOOP_OPENED = {
    "three blocks": ({}, 3 * 65536),
    "zero offsets": ({"offsets": [0, 0, 0, 0]}, 3 * 65536),
    "32-bit sector count wraps": ({"n": (1 << 20) + 5, "bs": 64 << 20, "offsets": [0], "pad": 0}, 335544320),
}
CLOOP_REFUSED = {
    "block size 0": {"bs": 0},
    "block size 100": {"bs": 100},
    "block size 128 MiB": {"bs": 128 << 20},
    "offsets decrease": {"offsets": [200, 300, 250, 400]},
    "a block over 128 MiB": {"offsets": [200, 300, 300 + (129 << 20), 130 << 20]},
    "offsets cut short (zeros)": {"size": 150},
}


@needs_qemu
def test_cloop(tmp_path):
    for name, (kw, size) in CLOOP_OPENED.items():
        data = cloop_image(**kw)
        assert cloop.probe(data[:512]) == 2
        (tmp_path / "c.img").write_bytes(data)
        got = info(tmp_path / "c.img")
        assert isinstance(got, dict) and got["format"] == "cloop", name
        assert cloop.decode(data).virtual_size == got["virtual-size"] == size, name
        assert "cluster-size" not in got and "dirty-flag" not in got
    for name, kw in CLOOP_REFUSED.items():
        data = cloop_image(**kw)
        with pytest.raises(FormatError):
            cloop.decode(data)
        (tmp_path / "c.img").write_bytes(data)
        assert isinstance(info(tmp_path / "c.img"), str), name
    near = cloop_image(magic=cloop.MAGIC_V2_0[:-2] + b"2\n")
    assert cloop.probe(near) == 0 and probed(tmp_path, near) == "raw"
    # the preamble imgchain's old signature table had: raw to qemu
    old = cloop_image(magic=b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$IMAGE offset=32\n")
    assert cloop.probe(old) == 0 and probed(tmp_path, old) == "raw"


# -- dmg -----------------------------------------------------------------------


def _mish(chunks) -> bytes:
    b = bytearray(204)
    struct.pack_into(">IIQQQ", b, 0, dmg.MISH, 1, 0, 2048, 0)
    for c in chunks:
        b += struct.pack(">IIQQQQ", *c)
    return bytes(b)


def _koly(sectors=2048, rsrc=(0, 0), xml=(0, 0), data_fork=0) -> bytes:
    t = bytearray(512)
    t[:4] = b"koly"
    struct.pack_into(">III", t, 4, 4, 512, 1)
    struct.pack_into(">Q", t, 0x18, data_fork)
    struct.pack_into(">QQ", t, 0x28, *rsrc)
    struct.pack_into(">QQ", t, 0xD8, *xml)
    struct.pack_into(">Q", t, 0x1EC, sectors)
    return bytes(t)


OK_CHUNKS = [(dmg.UDRW, 0, 0, 2048, 0, 2048 * 512), (0xFFFFFFFF, 0, 0, 0, 0, 0)]


def dmg_xml(chunks=OK_CHUNKS, sectors=2048, body=None) -> bytes:
    m = _mish(chunks)
    x = body if body is not None else b"<plist><data>\n\t" + base64.b64encode(m) + b"\n</data></plist>"
    return bytes(4096) + x + _koly(sectors, xml=(4096, len(x)))


def dmg_rsrc(chunks=OK_CHUNKS, sectors=2048) -> bytes:
    m = _mish(chunks)
    res = struct.pack(">I", len(m)) + m
    fork = struct.pack(">IIII", 16, 0, len(res), 0) + res
    return bytes(4096) + fork + _koly(sectors, rsrc=(4096, len(fork)))


DMG_OPENED = {
    "xml plist": (dmg_xml(), 1 << 20),
    "resource fork": (dmg_rsrc(), 1 << 20),
    "bzip2 chunk skipped (no dmg-bz2 module)": (dmg_xml([(dmg.UDBZ, 0, 0, 10**9, 0, (64 << 20) + 1)]), 1 << 20),
    "zero chunk unbounded": (dmg_xml([(dmg.UDZE, 0, 0, 10**9, 0, 0)]), 1 << 20),
    "trailer found in a file cut short": (dmg_xml()[:-100], 0),
}
DMG_REFUSED = {
    "chunk of too many sectors": dmg_xml([(dmg.UDRW, 0, 0, 2048 * 100, 0, 5)]),
    "chunk too long": dmg_xml([(dmg.UDZO, 0, 0, 10, 0, (64 << 20) + 1)]),
    "no trailer in reach": dmg_xml() + bytes(1100),
    "neither fork nor plist": bytes(4096) + _koly(),
    "unterminated <data>": dmg_xml(body=b"<data>AAAA"),
    "a small raw file": bytes(300),
}


@needs_qemu
def test_dmg(tmp_path):
    for name, (data, size) in DMG_OPENED.items():
        image = dmg.decode(data)
        (tmp_path / "d.dmg").write_bytes(data)
        got = info(tmp_path / "d.dmg")
        assert isinstance(got, dict) and got["format"] == "dmg", (name, got)
        assert image.virtual_size == got["virtual-size"] == size, name
        assert "cluster-size" not in got and "dirty-flag" not in got
    for name, data in DMG_REFUSED.items():
        with pytest.raises(FormatError):
            dmg.decode(data)
        (tmp_path / "d.dmg").write_bytes(data)
        assert isinstance(info(tmp_path / "d.dmg"), str), name


@needs_qemu
def test_dmg_probe_is_by_name(tmp_path):
    assert dmg.probe(b"", "x.dmg") == 2 and dmg.probe(bytes(512), "a/b.dmg") == 2
    assert dmg.probe(bytes(512), ".dmg") == 0 and dmg.probe(bytes(512), "x.DMG") == 0
    assert dmg.probe(bytes(512), None) == 0 and not dmg.sniff(bytes(512))
    assert probed(tmp_path, bytes(1024), ".dmg") == "raw"
    assert "UDIF trailer" in probed(tmp_path, bytes(1024), "zeros.dmg")  # dmg, refused
    # cloop (2) named .dmg: a tie that dmg wins (earlier in qemu's driver list)
    assert "UDIF trailer" in probed(tmp_path, cloop_image(), "c.dmg")


def test_truncation_and_fuzz_raise_only_our_errors():
    for data, decode in ((bochs_image(), bochs.decode), (cloop_image(), cloop.decode), (dmg_rsrc(), dmg.decode)):
        for n in range(len(data) + 1):
            only_our_errors(decode, data[:n])


@settings(max_examples=80, deadline=None)
@given(st.binary(max_size=700), st.sampled_from(["bochs", "cloop", "dmg"]))
def test_fuzz(junk, which):
    if which == "bochs":
        only_our_errors(bochs.decode, bochs_image()[:100] + junk)
    elif which == "cloop":
        only_our_errors(cloop.decode, cloop.MAGIC_V2_0.ljust(128, b"\0") + junk)
    else:
        data = bytearray(dmg_rsrc())
        data[4096 : 4096 + len(junk)] = junk[: len(data) - 4096 - 512]
        only_our_errors(dmg.decode, bytes(data))


def test_dmg_short_file_is_truncated():
    with pytest.raises(TruncatedError):
        dmg.decode(b"")
