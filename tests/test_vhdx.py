"""vhdx decoding, against qemu-img 7.2 where it is installed."""

from __future__ import annotations

import struct
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qemu_info import create, info, needs_qemu, only_our_errors, probed

from imgchain.errors import FormatError, TruncatedError, UnsupportedFeatureError
from imgchain.formats import Reference, vhdx

CREATED = [
    ("default", "10M", []),
    ("block_size 1M", "10M", ["-o", "block_size=1M"]),
    ("block_size 32M", "100M", ["-o", "block_size=32M"]),
    ("fixed", "3M", ["-o", "subformat=fixed"]),
    ("log_size 4M", "5M", ["-o", "log_size=4M"]),
    ("odd size", "1000K", []),
]


@needs_qemu
@pytest.mark.parametrize(("size", "opts"), [c[1:] for c in CREATED], ids=[c[0] for c in CREATED])
def test_qemu_made_images(tmp_path, size, opts):
    data = create(tmp_path, "vhdx", "x.vhdx", size, *opts)
    image = vhdx.decode(data)
    got = info(tmp_path / "x.vhdx")
    assert isinstance(got, dict) and got["format"] == "vhdx"
    assert (image.virtual_size, image.cluster_size) == (got["virtual-size"], got["cluster-size"])
    assert got["dirty-flag"] is image.info_dirty_flag is False and "format-specific" not in got
    assert image.fixed == ("subformat=fixed" in opts)
    assert vhdx.probe(data[:512]) == 100 and image.references == () and vhdx.named_files(data) == ()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from qemu_info import QEMU

    if QEMU is None:
        pytest.skip("qemu-img is not installed")
    tmp = tmp_path_factory.mktemp("vhdx")
    return create(tmp, "vhdx", "x.vhdx", "10M", "-o", "block_size=1M")


def _current(data: bytes) -> int:
    return (vhdx.HEADER1_OFFSET, vhdx.HEADER2_OFFSET)[vhdx._headers(vhdx.Window(data))[1]]


def _seal(b: bytearray, at: int, size: int) -> None:
    b[at + 4 : at + 8] = b"\0\0\0\0"
    struct.pack_into("<I", b, at + 4, vhdx.crc32c(bytes(b[at : at + size])))


def _metadata(data: bytes) -> tuple[int, dict[bytes, tuple[int, int]]]:
    win = vhdx.Window(data)
    _bat, md = vhdx._region_table(win, [])
    items = vhdx._metadata_entries(win, md)
    return md.file_offset, items


def _check(tmp_path, data: bytes, exc: type[Exception] | None, size: int | None = None) -> None:
    (tmp_path / "e.vhdx").write_bytes(data)
    got = info(tmp_path / "e.vhdx")
    if exc is None:
        assert isinstance(got, dict), got
        assert vhdx.decode(data).virtual_size == got["virtual-size"] == size
    else:
        with pytest.raises(exc):
            vhdx.decode(data)
        assert isinstance(got, str), got


@needs_qemu
def test_headers(tmp_path, base):
    cur = _current(base)
    other = vhdx.HEADER1_OFFSET + vhdx.HEADER2_OFFSET - cur
    b = bytearray(base)
    b[cur + 100] ^= 1  # current header's checksum breaks: the other one counts
    _check(tmp_path, bytes(b), None, 10 << 20)
    b[other + 100] ^= 1
    _check(tmp_path, bytes(b), FormatError)
    b = bytearray(base)
    struct.pack_into("<H", b, cur + 66, 2)  # version 2
    _seal(b, cur, 4096)
    _check(tmp_path, bytes(b), None, 10 << 20)  # the other header still counts
    b = bytearray(base)
    b[other : other + 4096] = b[cur : cur + 4096]
    b[other + 16] ^= 1  # same sequence number, different headers
    _seal(b, other, 4096)
    _check(tmp_path, bytes(b), FormatError)


@needs_qemu
def test_region_table_and_metadata_refusals(tmp_path, base):
    rt = vhdx.REGION_TABLE_OFFSET
    b = bytearray(base)
    b[rt + 200] ^= 1
    _check(tmp_path, bytes(b), FormatError)  # checksum
    b = bytearray(base)
    b[rt + 16 : rt + 32] = uuid.uuid4().bytes_le  # BAT GUID replaced by an unknown required region
    struct.pack_into("<I", b, rt + 16 + 28, 1)
    _seal(b, rt, 65536)
    _check(tmp_path, bytes(b), UnsupportedFeatureError)
    md, items = _metadata(base)
    fp = md + items[vhdx.FILE_PARAMETERS_GUID][0]
    b = bytearray(base)
    struct.pack_into("<I", b, fp, 3 << 20)
    _check(tmp_path, bytes(b), FormatError)  # block size 3 MiB
    b = bytearray(base)
    struct.pack_into("<I", b, fp + 4, vhdx.PARAMS_HAS_PARENT)
    _check(tmp_path, bytes(b), FormatError)  # has_parent without a locator
    b = bytearray(base)
    struct.pack_into("<I", b, md + items[vhdx.LOGICAL_SECTOR_SIZE_GUID][0], 1024)
    _check(tmp_path, bytes(b), FormatError)


@needs_qemu
def test_logical_sector_size_4096_is_unsupported(tmp_path, base):
    md, items = _metadata(base)
    b = bytearray(base)
    struct.pack_into("<I", b, md + items[vhdx.LOGICAL_SECTOR_SIZE_GUID][0], 4096)
    _check(tmp_path, bytes(b), UnsupportedFeatureError)


def _with_parent_locator(data: bytes, pairs: list[tuple[str, str]]) -> bytes:
    md, items = _metadata(data)
    b = bytearray(data)
    count = struct.unpack_from("<H", b, md + 10)[0]
    item_at = max(o + n for o, n in items.values())
    item_at = (item_at + 4095) // 4096 * 4096
    blob = bytearray(vhdx.VHDX_PARENT_LOCATOR_TYPE + struct.pack("<HH", 0, len(pairs)))
    strings = bytearray()
    table = bytearray()
    base_off = 20 + 12 * len(pairs)
    for key, value in pairs:
        k, v = key.encode("utf-16-le"), value.encode("utf-16-le")
        table += struct.pack("<IIHH", base_off + len(strings), base_off + len(strings) + len(k), len(k), len(v))
        strings += k + v
    blob += table + strings
    b[md + item_at : md + item_at + len(blob)] = blob
    struct.pack_into("<16sIIII", b, md + 32 + 32 * count, vhdx.PARENT_LOCATOR_GUID, item_at, len(blob), 4, 0)
    struct.pack_into("<H", b, md + 10, count + 1)
    md_fp = md + items[vhdx.FILE_PARAMETERS_GUID][0]
    struct.pack_into("<I", b, md_fp + 4, vhdx.PARAMS_HAS_PARENT)
    return bytes(b)


@needs_qemu
def test_parent_locator_refused_but_named(tmp_path, base):
    data = _with_parent_locator(
        base,
        [
            ("parent_linkage", "{83ca1a0c-fd24-4f6c-a4b7-0b5c1a35b0a1}"),
            ("relative_path", "..\\base.vhdx"),
            ("volume_path", "\\\\?\\Volume{26a21bda-a627-11d7-9931-806e6f6e6963}\\base.vhdx"),
            ("absolute_win32_path", "\\\\?\\C:\\vms\\base.vhdx"),
        ],
    )
    _check(tmp_path, data, UnsupportedFeatureError)
    assert vhdx.named_files(data) == (
        Reference("parent-locator", "..\\base.vhdx", "image", "vhdx"),
        Reference("parent-locator", "\\\\?\\Volume{26a21bda-a627-11d7-9931-806e6f6e6963}\\base.vhdx", "image", "vhdx"),
        Reference("parent-locator", "\\\\?\\C:\\vms\\base.vhdx", "image", "vhdx"),
    )


def _with_log(data: bytes, *, valid: bool) -> bytes:
    b = bytearray(data)
    cur = _current(data)
    h = vhdx.VhdxHeader._make(vhdx.unpack(vhdx.VHDX_HEADER, bytes(b[cur : cur + 80]), "vhdx", "h", cur))
    guid = uuid.uuid4().bytes_le
    b[cur + 48 : cur + 64] = guid
    _seal(b, cur, 4096)
    entry = bytearray(4096)
    struct.pack_into("<4sIIIQII16sQQ", entry, 0, b"loge", 0, 4096, 0, 1, 0, 0, guid, len(b), len(b))
    _seal(entry, 0, 4096)
    if not valid:
        entry[200] ^= 1  # the entry's checksum breaks: no valid sequence
    b[h.log_offset : h.log_offset + 4096] = entry
    return bytes(b)


@needs_qemu
def test_log(tmp_path, base):
    _check(tmp_path, _with_log(base, valid=False), None, 10 << 20)
    _check(tmp_path, _with_log(base, valid=True), UnsupportedFeatureError)


@needs_qemu
def test_bat_entry_past_the_end(tmp_path, base):
    win = vhdx.Window(base)
    bat, _md = vhdx._region_table(win, [])
    b = bytearray(base)
    struct.pack_into("<Q", b, bat.file_offset, (64 << 20) | vhdx.PAYLOAD_BLOCK_FULLY_PRESENT)
    _check(tmp_path, bytes(b), TruncatedError)
    b = bytearray(base)
    struct.pack_into("<Q", b, bat.file_offset, bat.file_offset | vhdx.PAYLOAD_BLOCK_FULLY_PRESENT)
    _check(tmp_path, bytes(b), FormatError)  # overlaps the BAT region


@needs_qemu
def test_near_miss_is_raw(tmp_path, base):
    near = b"vhdxfilX" + base[8:4096]
    assert vhdx.probe(near) == 0 and probed(tmp_path, near) == "raw"
    with pytest.raises(FormatError):
        vhdx.decode(near)


def test_crc32c():
    assert vhdx.crc32c(b"123456789") == 0xE3069283


@needs_qemu
def test_truncation_raises_only_our_errors(base):
    for n in list(range(0, 600, 7)) + list(range(0x10000, 0x31000, 997)) + [len(base) - 1]:
        only_our_errors(vhdx.decode, base[:n])


@needs_qemu
@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.sampled_from([0x10000, 0x20000, 0x30000, 0x200000, 0x100000]))
def test_fuzz_only_our_errors(base, junk, at):
    b = bytearray(base[: 4 << 20])
    b[at : at + len(junk)] = junk
    only_our_errors(vhdx.decode, bytes(b))
    only_our_errors(vhdx.named_files, bytes(b))
