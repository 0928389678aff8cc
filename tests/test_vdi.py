"""vdi decoding, against qemu-img 7.2 where it is installed."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qemu_info import create, info, needs_qemu, only_our_errors, probed

from imgchain.errors import UnsupportedFeatureError
from imgchain.formats import vdi


@needs_qemu
@pytest.mark.parametrize("opts", [[], ["-o", "static=on"]], ids=["dynamic", "static"])
@pytest.mark.parametrize("size", ["10M", "1000K"])
def test_qemu_made_images(tmp_path, opts, size):
    data = create(tmp_path, "vdi", "v.vdi", size, *opts)
    image = vdi.decode(data)
    got = info(tmp_path / "v.vdi")
    assert isinstance(got, dict) and got["format"] == "vdi"
    assert (image.virtual_size, image.cluster_size) == (got["virtual-size"], got["cluster-size"])
    assert got["dirty-flag"] is image.info_dirty_flag is False and "format-specific" not in got
    assert image.image_type == ("static" if opts else "dynamic")
    assert image.references == () and image.parent_uuid is None


EDITS = [
    ("version 1.0", 0x44, "<I", 0x00010000, "version"),
    ("unaligned block map", 0x154, "<I", 0x201, "offset_bmap"),
    ("unaligned data", 0x158, "<I", 0x1001, "offset_data"),
    ("sector size 4096", 0x168, "<I", 4096, "sector_size"),
    ("block size 2M", 0x178, "<I", 2 << 20, "block_size"),
    ("disk larger than the map", 0x170, "<Q", 11 << 20, "disk_size"),
    ("link UUID", 0x1A8, "<I", 1, "uuid_link"),
    ("parent UUID (differencing)", 0x1B8, "<I", 1, "uuid_parent"),
    ("too many blocks", 0x180, "<I", vdi.BLOCKS_IN_IMAGE_MAX + 1, "blocks_in_image"),
    ("disk over the maximum", 0x170, "<Q", vdi.DISK_SIZE_MAX + 512, "disk_size"),
]


@needs_qemu
@pytest.mark.parametrize(("at", "fmt", "value", "field"), [e[1:] for e in EDITS], ids=[e[0] for e in EDITS])
def test_refusals_match_qemu(tmp_path, at, fmt, value, field):
    b = bytearray(create(tmp_path, "vdi", "v.vdi", "10M"))
    struct.pack_into(fmt, b, at, value)
    with pytest.raises(UnsupportedFeatureError) as e:
        vdi.decode(bytes(b))
    assert e.value.field == field
    (tmp_path / "bad.vdi").write_bytes(b)
    assert isinstance(info(tmp_path / "bad.vdi"), str)


@needs_qemu
@pytest.mark.parametrize(
    ("at", "fmt", "value", "size"),
    [(0x170, "<Q", (10 << 20) - 100, 10 << 20), (0x4C, "<I", 7, 10 << 20), (0x48, "<I", 1, 10 << 20)],
    ids=["odd disk size rounds up", "unknown image type", "header_size unchecked"],
)
def test_edits_qemu_accepts(tmp_path, at, fmt, value, size):
    b = bytearray(create(tmp_path, "vdi", "v.vdi", "10M"))
    struct.pack_into(fmt, b, at, value)
    assert vdi.decode(bytes(b)).virtual_size == size
    (tmp_path / "e.vdi").write_bytes(b)
    got = info(tmp_path / "e.vdi")
    assert isinstance(got, dict) and got["virtual-size"] == size


@needs_qemu
def test_probe_and_near_misses(tmp_path):
    data = create(tmp_path, "vdi", "v.vdi", "1M")
    assert vdi.probe(data[:512]) == 100
    near = bytearray(data)
    near[0x40] ^= 1
    assert vdi.probe(bytes(near)) == 0 and probed(tmp_path, bytes(near)) == "raw"
    # a 100-byte file: qemu probes a zero-padded 512-byte buffer, so it is vdi (and refused)
    assert vdi.probe(data[:100]) == 100 and probed(tmp_path, data[:100]) != "raw"
    assert not vdi.sniff(b"")


def test_truncation_raises_only_our_errors():
    header = bytearray(512)
    struct.pack_into("<IIII", header, 0x40, vdi.SIGNATURE, vdi.VERSION_1_1, 400, 1)
    data = bytes(header)
    for n in range(len(data) + 1):
        only_our_errors(vdi.decode, data[:n])


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_only_our_errors(junk):
    b = bytearray(junk.ljust(512, b"\0"))
    struct.pack_into("<I", b, 0x40, vdi.SIGNATURE)
    only_our_errors(vdi.decode, bytes(b))
