"""vhdx decoding, against qemu-img 7.2 where it is installed."""

from __future__ import annotations

import struct
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qemu_info import create, info, needs_qemu, only_our_errors, probed

from imgchain.errors import FormatError, TruncatedError, UnsupportedFeatureError
from imgchain.formats import NeedBytes, Reference, Window, vhdx

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


# -- speed without a change of behaviour: the CRC, the reads, the resumed passes --


def _crc32c_reference(data: bytes, crc: int = 0) -> int:
    """CRC-32C byte by byte (vhdx_checksum_calc's loop), for comparison."""
    c = crc ^ 0xFFFFFFFF
    for b in data:
        c ^= b
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    return c ^ 0xFFFFFFFF


@settings(max_examples=150, deadline=None)
@given(
    st.binary(max_size=300),
    st.integers(0, 5000),
    st.binary(max_size=40),
    st.integers(0, (1 << 32) - 1),
)
def test_crc32c_is_the_byte_loop_s(head, zeros, tail, crc):
    """The table's fields, a run of zeros (the rest of the table), maybe
    more bytes: the same CRC as the plain loop, from 0 or continuing."""
    data = head + bytes(zeros) + tail
    assert vhdx.crc32c(data) == _crc32c_reference(data)
    assert vhdx.crc32c(data, crc) == _crc32c_reference(data, crc)
    for at in (0, 4, 8, len(data) - 4):
        if at >= 0:
            sealed = bytearray(data.ljust(at + 4, b"\0"))
            sealed[at : at + 4] = b"\0\0\0\0"
            right = _crc32c_reference(bytes(sealed))
            for stored in (right, right ^ 1 << (len(data) % 32)):
                sealed[at : at + 4] = stored.to_bytes(4, "little")
                assert vhdx.checksum_ok(bytes(sealed), at) == (stored == right)


def test_crc32c_of_long_and_repeated_tables():
    """Long nonzero runs (a log entry's data) and tables checked one after
    another (the second as a difference from the first) come out right."""
    import random

    rnd = random.Random(7)
    for length in (4096, 65536):
        table = bytearray(length)
        for _ in range(3):
            for _ in range(rnd.randrange(1, 20)):
                table[rnd.randrange(200)] = rnd.randrange(256)
            table[rnd.randrange(length)] = rnd.randrange(256)
            assert vhdx.crc32c(bytes(table)) == _crc32c_reference(bytes(table))
    noise = rnd.randbytes(9000)
    assert vhdx.crc32c(noise) == _crc32c_reference(noise)
    assert vhdx.crc32c(noise[4000:], vhdx.crc32c(noise[:4000])) == _crc32c_reference(noise)


class _Reads(Window):
    """A window that starts with a file's first 4 KiB and is filled as
    imgchain.probe fills it (at least 64 KiB a read), counting the reads and
    the decoder's look-ups."""

    __slots__ = ("data", "lookups", "reads")

    def __init__(self, data: bytes) -> None:
        super().__init__(data[:4096], len(data))
        self.data = data
        self.reads: list[tuple[int, int]] = []
        self.lookups = 0

    def get(self, offset, length, fmt, field, field_offset=None, *, ahead=0):  # type: ignore[no-untyped-def]
        self.lookups += 1
        return super().get(offset, length, fmt, field, field_offset, ahead=ahead)

    def fill(self, decode):  # type: ignore[no-untyped-def]
        while True:
            try:
                return decode(self)
            except NeedBytes as need:
                length = min(max(need.length, 65536), self.size - need.offset)
                self.reads.append((need.offset, length))
                self.add(need.offset, self.data[need.offset : need.offset + length])


@needs_qemu
@pytest.mark.parametrize(("size", "opts"), [c[1:] for c in CREATED], ids=[c[0] for c in CREATED])
def test_a_qemu_made_image_takes_four_reads(tmp_path, size, opts):
    """Both headers in one read, the region table in one, the metadata table
    with its items in one, the BAT in one; and the result is the one the
    whole file gives."""
    data = create(tmp_path, "vhdx", "x.vhdx", size, *opts)
    win = _Reads(data)
    assert win.fill(vhdx.decode) == vhdx.decode(data)
    bat, md = vhdx._region_table(vhdx.Window(data), [])
    assert [offset for offset, _n in win.reads] == [
        vhdx.HEADER1_OFFSET,
        vhdx.REGION_TABLE_OFFSET,
        md.file_offset,
        bat.file_offset,
    ]
    assert sum(n for _o, n in win.reads) <= 68 * 1024 + 64 * 1024 + 68 * 1024 + max(64 * 1024, bat.length)


@needs_qemu
def test_headers_the_higher_valid_sequence_number_wins(base):
    """qemu's rule over every mix of sequence numbers and broken headers."""
    h1, h2 = vhdx.HEADER1_OFFSET, vhdx.HEADER2_OFFSET
    for seq1, seq2 in ((1, 2), (2, 1), (3, 3)):
        for broken1, broken2 in ((None, None), (4, None), (66, None), (None, 0), (None, 100), (0, 200)):
            for differ in (False, True):
                b = bytearray(base)
                b[h2 : h2 + 4096] = b[h1 : h1 + 4096]
                if differ:
                    b[h2 + 20] ^= 1  # file_write_guid
                for at, seq, broken in ((h1, seq1, broken1), (h2, seq2, broken2)):
                    struct.pack_into("<Q", b, at + 8, seq)
                    _seal(b, at, 4096)
                    if broken is not None:
                        b[at + broken] ^= 1  # the signature, the checksum, the version, or the checksum's cover
                valid = [broken1 is None, broken2 is None]
                if not any(valid):
                    want: int | None = None
                elif not all(valid):
                    want = valid.index(True)
                elif seq1 != seq2:
                    want = 0 if seq1 > seq2 else 1
                else:
                    want = None if differ else 0
                if want is None:
                    with pytest.raises(FormatError):
                        vhdx._headers(vhdx.Window(bytes(b)))
                else:
                    h, current = vhdx._headers(vhdx.Window(bytes(b)))
                    assert (current, h.sequence_number) == (want, (seq1, seq2)[want])


@needs_qemu
@pytest.mark.parametrize("valid", [True, False])
def test_the_log_search_goes_on_where_a_read_stopped_it(base, valid):
    """A log entry deep in the log: the search through the probe's reads
    gives the whole file's answer, looking at each sector about once (it
    does not start over after each read)."""
    b = bytearray(_with_log(base, valid=valid))
    h = vhdx._headers(vhdx.Window(bytes(b)))[0]
    entry = b[h.log_offset : h.log_offset + 4096]
    b[h.log_offset : h.log_offset + 4096] = bytes(4096)
    deep = h.log_offset + 200 * 4096
    b[deep : deep + 4096] = entry
    data = bytes(b)
    win = _Reads(data)
    if valid:
        with pytest.raises(UnsupportedFeatureError):
            win.fill(vhdx.decode)
        with pytest.raises(UnsupportedFeatureError):
            vhdx.decode(data)
    else:
        assert win.fill(vhdx.decode) == vhdx.decode(data)
    sectors = (201 if valid else h.log_length // 4096) + 1
    assert len([o for o, _n in win.reads if h.log_offset <= o < h.log_offset + h.log_length]) <= sectors // 16 + 1
    assert win.lookups < 3 * sectors + 40, win.lookups


@needs_qemu
def test_fully_present_blocks(tmp_path, base):
    """Blocks in the file pass; the first one past its end is the one named,
    as qemu's loop over the BAT names it; one over a region is refused."""
    win = vhdx.Window(base)
    bat, _md = vhdx._region_table(win, [])
    data = bytearray(base + bytes(16 << 20))
    end = len(base)
    for i in range(10):  # every data block of the 10 MiB disk (1 MiB blocks), past the regions
        struct.pack_into("<Q", data, bat.file_offset + 8 * i, (end + (i << 20)) | vhdx.PAYLOAD_BLOCK_FULLY_PRESENT)
    _check(tmp_path, bytes(data), None, 10 << 20)
    late = bytearray(data)
    struct.pack_into("<Q", late, bat.file_offset + 8 * 6, (64 << 20) | vhdx.PAYLOAD_BLOCK_FULLY_PRESENT)
    struct.pack_into("<Q", late, bat.file_offset + 8 * 8, (96 << 20) | vhdx.PAYLOAD_BLOCK_FULLY_PRESENT)
    with pytest.raises(TruncatedError, match="BAT entry 6 points at 0x4000000"):
        vhdx.decode(bytes(late))
    _check(tmp_path, bytes(late), TruncatedError)
    over = bytearray(data)
    struct.pack_into("<Q", over, bat.file_offset + 8 * 3, bat.file_offset | vhdx.PAYLOAD_BLOCK_FULLY_PRESENT)
    with pytest.raises(FormatError, match="BAT entry 3 at"):
        vhdx.decode(bytes(over))
    _check(tmp_path, bytes(over), FormatError)
