"""vhdx: Microsoft's VHDX, as qemu 7.2's ``block/vhdx.c`` and
``block/vhdx-log.c`` open it.

Layouts and names follow Microsoft's *VHDX Format Specification v1.00*
(qemu's ``block/vhdx.h`` uses the same names), little-endian; GUIDs are
stored as Microsoft GUIDs (``uuid.UUID.bytes_le``).  The rules are qemu
7.2's, in its order:

* **Probe** (``vhdx_probe``): 100 when the file starts with ``vhdxfile``.
* **Headers** at 64 KiB and 128 KiB (4 KiB each): a header counts when its
  CRC-32C (over 4 KiB, the checksum field taken as zero), its signature
  ``head`` and its version 1 are right.  With two, the higher
  ``sequence_number`` wins; equal numbers are refused unless the headers
  are identical.  None: "No valid VHDX header found".
* **Log** (``vhdx_parse_log``): ``log_offset`` a non-zero multiple of 1 MiB,
  ``log_version`` 0; when ``log_guid`` is not zero and ``log_length`` is
  non-zero (a multiple of 1 MiB), the log is searched for a valid sequence
  of entries: if there is one, the log **needs replay** and qemu refuses a
  read-only open (as ``qemu-img info`` is).  An entry whose descriptors are
  invalid refuses the image outright.
* **Region table** at 192 KiB (64 KiB, CRC-32C, ``regi``, at most 2047
  entries): regions must not overlap each other or the log; exactly one
  BAT and one metadata region; an unknown region marked required refuses.
* **Metadata** (``metadata``, at most 2047 entries in 64 KiB): file
  parameters, virtual disk size, page 83 data, logical and physical sector
  size must each be present once, and nothing else: a **parent locator
  item makes qemu refuse** (ENOTSUP), as does ``has_parent``; an unknown
  required item refuses.  Block size 1..256 MiB, a power of two; logical
  sector size 512 (4096 is refused as unsupported).
* **BAT**: large enough for every block; each fully present block inside
  the file (its length rounded up to 512) and clear of the other regions.

Virtual size: ``virtual_disk_size`` in whole 512-byte sectors.  qemu 7.2
refuses a logical sector size of 4096 (ENOTSUP: it supports 512 only), any
other but 512 with EINVAL.  ``qemu-img info`` prints ``cluster-size`` (the
block size) and ``dirty-flag: false``; no format-specific data.

**Parent locators**: a differencing VHDX names its parent in the parent
locator item (key/value pairs ``relative_path``, ``volume_path``,
``absolute_win32_path``, ``parent_linkage``).  qemu refuses such images, so
:func:`decode` raises; :func:`named_files` decodes them anyway (Hyper-V
opens them), as ``parent-locator`` references.

Reads past the end of the file read zeros, as in qemu.  Pure: see
``formats._base``.  Through the probe's window a qemu-made VHDX takes four
reads: both headers, the region table, the metadata table with the items
after it, the BAT's entries.  What each step found is kept in ``win.memo``,
so the calls that NeedBytes interrupts do not work it out again (the log
search goes on from the entry it had reached).
"""

from __future__ import annotations

import struct
import uuid
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from functools import reduce
from itertools import compress
from operator import getitem, xor
from typing import Any, NamedTuple

from construct import Bytes, Int16ul, Int32ul, Int64ul, Struct

from imgchain.errors import FormatError, TruncatedError, UnsupportedFeatureError

from ._base import Reference, Window, as_window, flat, has_none_of, unpack
from ._qemuread import INT64_MAX, SECTOR, qemu_length, read_padded

NAME = "vhdx"
FILE_SIGNATURE = b"vhdxfile"
HEADER_SIGNATURE = b"head"
REGION_SIGNATURE = b"regi"
METADATA_SIGNATURE = b"metadata"
LOG_SIGNATURE = b"loge"

KiB, MiB = 1024, 1024 * 1024
HEADER1_OFFSET, HEADER2_OFFSET = 64 * KiB, 128 * KiB
HEADER_SIZE = 4 * KiB
REGION_TABLE_OFFSET = 192 * KiB
HEADER_BLOCK_SIZE = 64 * KiB
METADATA_TABLE_MAX_SIZE = 64 * KiB
REGION_TABLE_MAX_ENTRIES = 2047
LOG_MIN_SIZE = MiB
LOG_SECTOR_SIZE = 4 * KiB
BLOCK_SIZE_MIN, BLOCK_SIZE_MAX = MiB, 256 * MiB
MAX_SECTORS_PER_BLOCK = 1 << 23
REGION_ENTRY_REQUIRED = 1
META_FLAGS_IS_REQUIRED = 1 << 2
PARAMS_LEAVE_BLOCKS_ALLOCATED, PARAMS_HAS_PARENT = 1, 2
BAT_STATE_MASK = 7
PAYLOAD_BLOCK_FULLY_PRESENT = 6
BAT_FILE_OFF_MASK = 0xFFFFFFFFFFF00000


def _guid(text: str) -> bytes:
    return uuid.UUID(text).bytes_le


BAT_GUID = _guid("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_GUID = _guid("8B7CA206-4790-4B9A-B8FE-575F050F886E")
FILE_PARAMETERS_GUID = _guid("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
VIRTUAL_DISK_SIZE_GUID = _guid("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
PAGE83_DATA_GUID = _guid("BECA12AB-B2E6-4523-93EF-C309E000C746")
LOGICAL_SECTOR_SIZE_GUID = _guid("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PHYSICAL_SECTOR_SIZE_GUID = _guid("CDA348C7-445D-4471-9CC9-E9885251C556")
PARENT_LOCATOR_GUID = _guid("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
VHDX_PARENT_LOCATOR_TYPE = _guid("B04AEFB7-D19E-4A81-B789-25B8E9445913")

_ITEMS = {
    FILE_PARAMETERS_GUID: "file parameters",
    VIRTUAL_DISK_SIZE_GUID: "virtual disk size",
    PAGE83_DATA_GUID: "page 83 data",
    LOGICAL_SECTOR_SIZE_GUID: "logical sector size",
    PHYSICAL_SECTOR_SIZE_GUID: "physical sector size",
    PARENT_LOCATOR_GUID: "parent locator",
}
_REQUIRED_ITEMS = frozenset(_ITEMS) - {PARENT_LOCATOR_GUID}

# -- layouts -------------------------------------------------------------------

FILE_IDENTIFIER = Struct("signature" / Bytes(8), "creator" / Bytes(512))
"""The File Type Identifier at 0: ``vhdxfile`` and a UTF-16 creator string."""

VHDX_HEADER = Struct(
    "signature" / Bytes(4),  # 0, "head"
    "checksum" / Int32ul,  # 4, CRC-32C over the 4 KiB header
    "sequence_number" / Int64ul,  # 8
    "file_write_guid" / Bytes(16),  # 16
    "data_write_guid" / Bytes(16),  # 32
    "log_guid" / Bytes(16),  # 48
    "log_version" / Int16ul,  # 64
    "version" / Int16ul,  # 66
    "log_length" / Int32ul,  # 68
    "log_offset" / Int64ul,  # 72
)
"""The header (80 of its 4096 bytes)."""

REGION_TABLE_HEADER = Struct(
    "signature" / Bytes(4), "checksum" / Int32ul, "entry_count" / Int32ul, "reserved" / Int32ul
)
REGION_TABLE_ENTRY = Struct("guid" / Bytes(16), "file_offset" / Int64ul, "length" / Int32ul, "data_bits" / Int32ul)

METADATA_TABLE_HEADER = Struct(
    "signature" / Bytes(8), "reserved" / Int16ul, "entry_count" / Int16ul, "reserved2" / Bytes(20)
)
METADATA_TABLE_ENTRY = Struct(
    "item_id" / Bytes(16), "offset" / Int32ul, "length" / Int32ul, "data_bits" / Int32ul, "reserved2" / Int32ul
)
FILE_PARAMETERS = Struct("block_size" / Int32ul, "data_bits" / Int32ul)

PARENT_LOCATOR_HEADER = Struct("locator_type" / Bytes(16), "reserved" / Int16ul, "key_value_count" / Int16ul)
PARENT_LOCATOR_ENTRY = Struct(
    "key_offset" / Int32ul, "value_offset" / Int32ul, "key_length" / Int16ul, "value_length" / Int16ul
)

LOG_ENTRY_HEADER = Struct(
    "signature" / Bytes(4),  # "loge"
    "checksum" / Int32ul,
    "entry_length" / Int32ul,
    "tail" / Int32ul,
    "sequence_number" / Int64ul,
    "descriptor_count" / Int32ul,
    "reserved" / Int32ul,
    "log_guid" / Bytes(16),
    "flushed_file_offset" / Int64ul,
    "last_file_offset" / Int64ul,
)
"""A log entry's header (64 bytes)."""

LOG_DESCRIPTOR = Struct(
    "signature" / Bytes(4),  # "zero" or "desc"
    "trailing_bytes" / Int32ul,  # (a zero descriptor: reserved)
    "leading_bytes" / Int64ul,  # (a zero descriptor: zero_length)
    "file_offset" / Int64ul,
    "sequence_number" / Int64ul,
)
"""A log descriptor (32 bytes)."""

# -- CRC-32C (Castagnoli), as vhdx_checksum_calc ---------------------------------
#
# The checksums qemu checks cover a 4 KiB header, a 64 KiB region table and
# log entries: a few dozen bytes of fields, then zeros.  The CRC is linear
# over GF(2), so it is worked out from the nonzero bytes alone:
#
#   register(data) = Z**n(register before) ^ Lin_n(data)
#
# where Z**k is what k zero bytes do to the register (an operator: four
# look-ups once its tables exist, built from x**(8k) modulo the polynomial as
# zlib's crc32_combine does) and Lin_n sums, over the nonzero bytes, each
# byte's own contribution: a byte followed by j more bytes contributes
# ``_position_tables()[j][byte]``.  The sum runs in C (map and reduce), and
# only over the span of bytes that differ from a reference buffer of the same
# length (an all-zero one, or the last one checked: a VHDX's two headers
# differ in their sequence number only, and images made by one tool share
# their region table).  The result is exactly the table loop's.

_POLY = 0x82F63B78


def _crc_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC_TABLE = _crc_table()


def _multmodp(a: int, b: int) -> int:
    """``a`` times ``b`` modulo the polynomial, both in the register's
    reflected order (zlib's ``multmodp``); ``a`` is not zero."""
    m = 1 << 31
    p = 0
    while True:
        if a & m:
            p ^= b
            if not a & (m - 1):
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


def _x2n_table() -> tuple[int, ...]:
    """``x**(2**k)`` modulo the polynomial, for k up to 63."""
    table = [1 << 30]  # x**1
    for _ in range(63):
        table.append(_multmodp(table[-1], table[-1]))
    return tuple(table)


_X2N = _x2n_table()


def _x8n(n: int) -> int:
    """``x**(8n)`` modulo the polynomial: what ``n`` zero bytes multiply the register by."""
    p = 1 << 31  # x**0
    k = 3
    while n:
        if n & 1:
            p = _multmodp(_X2N[k], p)
        n >>= 1
        k += 1
    return p


_OPS: dict[int, tuple[list[int], ...]] = {}
_OPS_MAX = 64


def _op_tables(n: int) -> tuple[list[int], ...]:
    """The operator of ``n`` zero bytes as four tables, one per byte of the
    register: its product with a register is four look-ups."""
    x = _x8n(n)
    columns = [_multmodp(x, 1 << i) for i in range(32)]
    built = []
    for j in range(4):
        table = [0] * 256
        for b in range(1, 256):
            low = (b & -b).bit_length() - 1
            table[b] = table[b & (b - 1)] ^ columns[8 * j + low]
        built.append(table)
    return tuple(built)


def _shift(c: int, n: int) -> int:
    """The CRC register ``c`` after ``n`` zero bytes."""
    if not c or not n:
        return c
    op = _OPS.get(n)
    if op is None:
        if len(_OPS) >= _OPS_MAX:  # (many lengths seen: work it out alone, without tables)
            return _multmodp(_x8n(n), c)
        op = _OPS[n] = _op_tables(n)
    t0, t1, t2, t3 = op
    return t0[c & 0xFF] ^ t1[(c >> 8) & 0xFF] ^ t2[(c >> 16) & 0xFF] ^ t3[c >> 24]


#: ``_POSITIONS[j][b]``: what byte ``b`` followed by ``j`` bytes adds to the register.
_POSITIONS: list[list[int]] = [list(_CRC_TABLE)]
_SPAN = 128  # the longest span summed at once (longer ones go in pieces of this size)


def _position_tables(n: int) -> list[list[int]]:
    """``_POSITIONS`` for at least ``n`` positions (grown when first needed)."""
    have = _POSITIONS
    if len(have) >= n:
        return have
    table = _CRC_TABLE
    grown = list(have)
    while len(grown) < n:
        grown.append([table[c & 0xFF] ^ (c >> 8) for c in grown[-1]])
    globals()["_POSITIONS"] = grown  # (one rebinding: a reader holds a whole list, never part of one)
    return grown


def _sum_span(span: bytes) -> int:
    """The register from zero after ``span``: its bytes' contributions."""
    n = len(span)
    if n <= _SPAN:
        return reduce(xor, map(getitem, _position_tables(n), reversed(span)), 0)
    reg = 0
    for i in range(0, n, _SPAN):
        piece = span[i : i + _SPAN]
        reg = _shift(reg, len(piece)) ^ _sum_span(piece)
    return reg


def _lin(d: int, n: int) -> int:
    """``Lin_n`` of the ``n`` bytes whose little-endian value is ``d``."""
    if not d:
        return 0
    end = (d.bit_length() + 7) >> 3
    start = ((d & -d).bit_length() - 1) >> 3
    return _shift(_sum_span((d >> 8 * start).to_bytes(end - start, "little")), n - end)


#: The last table of each length worked out: length -> (value, register).
_REFERENCE: dict[int, tuple[int, int]] = {}


def _register(v: int, n: int) -> int:
    """The register after the ``n`` bytes of little-endian value ``v``, from
    the initial register (all ones): the last table of that length's, and
    the contributions of the bytes that differ from it, when they end before
    ``v``'s own bytes do; else the contributions of ``v``'s bytes."""
    ref = _REFERENCE.get(n)
    if ref is not None:
        d = v ^ ref[0]
        if not d:
            return ref[1]
        if d.bit_length() < v.bit_length():
            reg = ref[1] ^ _lin(d, n)
            _REFERENCE[n] = (v, reg)
            return reg
    reg = _shift(0xFFFFFFFF, n) ^ _lin(v, n)
    if v.bit_length() <= 8 * _SPAN:  # (a table, not a log entry's data)
        if len(_REFERENCE) >= _OPS_MAX:
            _REFERENCE.clear()
        _REFERENCE[n] = (v, reg)
    return reg


_ZERO_BLOCKS = {1 << k: bytes(1 << k) for k in range(7, 17)}
_ZERO_TAILS: dict[int, bytes] = {}


def _nonzero_end(data: bytes) -> int:
    """A length after which ``data`` holds only zeros (within 128 bytes of
    the shortest), found by memcmp."""
    n = len(data)
    if n <= _SPAN:
        return n
    tail = _ZERO_TAILS.get(n - _SPAN)
    if tail is None and len(_ZERO_TAILS) < 8:
        tail = _ZERO_TAILS[n - _SPAN] = bytes(n - _SPAN)
    if tail is not None and data.endswith(tail):  # the usual case: one table's entries, then zeros
        return _SPAN
    end = n
    size = 1 << 16
    while size >= _SPAN:
        if end >= size and data.endswith(_ZERO_BLOCKS[size], 0, end):
            end -= size
        else:
            size >>= 1
    return end


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C of ``data`` (continuing from ``crc``, a finished CRC): the
    table loop's result, worked out as the comment above says."""
    n = len(data)
    v = int.from_bytes(data[: _nonzero_end(data)], "little")
    if crc:
        return (_shift(crc ^ 0xFFFFFFFF, n) ^ _lin(v, n)) ^ 0xFFFFFFFF
    return _register(v, n) ^ 0xFFFFFFFF


def checksum_ok(buf: bytes, at: int = 4, win: Window | None = None, offset: int | None = None) -> bool:
    """``vhdx_checksum_is_valid``: the CRC-32C with the field at ``at``
    zeroed.  With ``win`` and ``offset`` (where ``buf`` was read), worked out
    once per window."""
    if win is not None:
        key = ("crc32c", offset, len(buf), at)
        known = win.memo.get(key)
        if known is None:
            known = win.memo[key] = checksum_ok(buf, at)
        return bool(known)
    stored = int.from_bytes(buf[at : at + 4], "little")
    n = len(buf)
    if at + 4 > n:  # (the zeroed field makes the data longer)
        return crc32c(buf[:at] + b"\0\0\0\0") == stored
    v = int.from_bytes(buf[: _nonzero_end(buf)], "little") & ~(0xFFFFFFFF << 8 * at)
    return _register(v, n) ^ 0xFFFFFFFF == stored


# -- records -------------------------------------------------------------------


class VhdxHeader(NamedTuple):
    signature: bytes
    checksum: int
    sequence_number: int
    file_write_guid: bytes
    data_write_guid: bytes
    log_guid: bytes
    log_version: int
    version: int
    log_length: int
    log_offset: int


class RegionTableEntry(NamedTuple):
    guid: bytes
    file_offset: int
    length: int
    data_bits: int


@has_none_of("backing_filename", "backing_format", "dirty", "corrupt", "encrypted", "data_file", "references")
class VhdxImage(NamedTuple):
    """A VHDX as qemu opens it."""

    header: VhdxHeader
    current_header: int  #: 0 (at 64 KiB) or 1 (at 128 KiB)
    bat: RegionTableEntry
    metadata: RegionTableEntry
    block_size: int
    file_parameters_bits: int
    virtual_disk_size: int
    logical_sector_size: int
    physical_sector_size: int
    creator: str  #: the file identifier's creator string

    @property
    def format(self) -> str:
        return NAME

    @property
    def virtual_size(self) -> int:
        """As qemu counts it: ``virtual_disk_size >> 9`` sectors of 512 bytes
        (the logical sector size is always 512 here)."""
        return (self.virtual_disk_size >> 9) * SECTOR

    @property
    def cluster_size(self) -> int:
        return self.block_size

    @property
    def fixed(self) -> bool:
        """``leave_blocks_allocated``: a fixed (preallocated) disk."""
        return bool(self.file_parameters_bits & PARAMS_LEAVE_BLOCKS_ALLOCATED)

    @property
    def info_dirty_flag(self) -> bool | None:
        return False


class ParentLocator(NamedTuple):
    """A parent locator item: its type and its key/value pairs."""

    locator_type: bytes
    entries: tuple[tuple[str, str], ...]

    def get(self, key: str) -> str | None:
        for k, v in self.entries:
            if k == key:
                return v
        return None


#: The parent locator keys that name files, in the order Hyper-V tries them.
PATH_KEYS = ("relative_path", "volume_path", "absolute_win32_path")


def probe(buf: bytes, filename: str | None = None) -> int:
    """qemu's ``vhdx_probe``: 100 for ``vhdxfile`` at 0."""
    return 100 if buf[:8] == FILE_SIGNATURE else 0


def sniff(buf: bytes) -> bool:
    return probe(buf) > 0


def _bad(reason: str, field: str, offset: int, value: object = None) -> FormatError:
    return FormatError(NAME, reason, field=field, offset=offset, value=value)


def _unsupported(reason: str, field: str, offset: int, value: object = None) -> UnsupportedFeatureError:
    return UnsupportedFeatureError(NAME, reason, field=field, offset=offset, value=value)


# -- headers -------------------------------------------------------------------


def _header_ok(buf: bytes, h: tuple[Any, ...]) -> bool:
    """A header counts: signature, version 1 and checksum."""
    return bool(h[0] == HEADER_SIGNATURE and h[7] == 1 and checksum_ok(buf))


def _headers(win: Window) -> tuple[VhdxHeader, int]:
    found = []
    for offset in (HEADER1_OFFSET, HEADER2_OFFSET):
        buf = read_padded(win, offset, HEADER_SIZE, NAME, "header", ahead=HEADER2_OFFSET + HEADER_SIZE - offset)
        found.append((buf, unpack(VHDX_HEADER, buf[:80], NAME, "header", offset)))
    (buf1, h1), (buf2, h2) = found
    seq1, seq2 = h1[2], h2[2]  # sequence_number
    # A header that counts and has the higher sequence number wins whether the other counts or not:
    # that one is checked first (the other's checksum is then not needed).
    ok1 = ok2 = None
    if seq1 > seq2:
        ok1 = _header_ok(buf1, h1)
        if ok1:
            return VhdxHeader._make(h1), 0
    elif seq2 > seq1:
        ok2 = _header_ok(buf2, h2)
        if ok2:
            return VhdxHeader._make(h2), 1
    if ok1 is None:
        ok1 = _header_ok(buf1, h1)
    if ok2 is None:
        ok2 = _header_ok(buf2, h2)
    if not ok1 and not ok2:
        raise _bad("no valid VHDX header found (checksum, signature or version)", "header", HEADER1_OFFSET)
    if not ok2:
        return VhdxHeader._make(h1), 0
    if not ok1:
        return VhdxHeader._make(h2), 1
    if seq1 > seq2:
        return VhdxHeader._make(h1), 0
    if seq2 > seq1:
        return VhdxHeader._make(h2), 1
    if buf1[:80] == buf2[:80]:
        return VhdxHeader._make(h1), 0
    raise _bad(
        "no valid VHDX header found: two different headers with the same sequence number",
        "sequence_number",
        HEADER1_OFFSET + 8,
        seq1,
    )


# -- the log (vhdx-log.c) ----------------------------------------------------------


class _Log:
    """qemu's VHDXLogEntries: a circular buffer of 4 KiB sectors."""

    __slots__ = ("length", "offset", "read", "write")

    def __init__(self, offset: int, length: int) -> None:
        self.offset, self.length, self.read, self.write = offset, length, 0, length

    def inc(self, idx: int) -> int:
        idx += LOG_SECTOR_SIZE
        return 0 if idx >= self.length else idx


class _LogError(Exception):
    """qemu's search returned an error (not "no valid entry")."""


def _peek(win: Window, log: _Log) -> bytes:
    read = log.read
    if read + 64 > log.length:
        read = 0
    if read == log.write:
        raise _LogError("empty")
    return read_padded(win, log.offset + read, 64, NAME, "log entry header")


def _hdr_valid(h: tuple, log: _Log, log_guid: bytes) -> bool:  # type: ignore[type-arg]
    sig, _cs, entry_length, _tail, seq, count, _r, guid, _f, _l = h
    return bool(
        sig == LOG_SIGNATURE
        and log.length >= entry_length
        and entry_length % LOG_SECTOR_SIZE == 0
        and seq != 0
        and guid == log_guid
        and count * 32 <= entry_length
    )


def _read_sectors(win: Window, log: _Log, n: int) -> list[bytes]:
    out = []
    read = log.read
    while n:
        if read == log.write:
            break
        out.append(read_padded(win, log.offset + read, LOG_SECTOR_SIZE, NAME, "log sector"))
        read = log.inc(read)
        n -= 1
    log.read = read
    return out


def _desc_sectors(count: int) -> int:
    count = (count + 2) & 0xFFFFFFFF
    return count // 128 + (1 if count % 128 else 0)


def _validate_entry(win: Window, log: _Log, seq: int, log_guid: bytes) -> tuple | None:  # type: ignore[type-arg]
    """``vhdx_validate_log_entry``: the entry's header when valid, else None
    (the read index moved past it); _LogError where qemu fails."""
    raw = _peek(win, log)
    h = unpack(LOG_ENTRY_HEADER, raw, NAME, "log entry header", log.offset + log.read)
    if not _hdr_valid(h, log, log_guid) or (seq > 0 and h[4] != seq + 1):
        log.read = log.inc(log.read)
        return None
    count = h[5]
    desc = _desc_sectors(count)
    total = h[2] // LOG_SECTOR_SIZE
    # vhdx_log_read_desc: peek again, read the descriptor sectors, check each descriptor
    raw = _peek(win, log)
    h2 = unpack(LOG_ENTRY_HEADER, raw, NAME, "log entry header", log.offset + log.read)
    if not _hdr_valid(h2, log, log_guid):
        raise _LogError("invalid log entry header")
    sectors = _read_sectors(win, log, desc)
    if len(sectors) != desc:
        raise _LogError("log entry descriptors past the log")
    buf = b"".join(sectors)
    for i in range(h2[5]):
        at = 64 + 32 * i
        sig, _t, zero_length, file_offset, dseq = unpack(LOG_DESCRIPTOR, buf[at : at + 32], NAME, "log descriptor", 0)
        ok = dseq == h2[4] and file_offset % LOG_SECTOR_SIZE == 0
        ok = ok and (sig == b"desc" or (sig == b"zero" and zero_length % LOG_SECTOR_SIZE == 0))
        if not ok:
            raise _LogError(f"invalid log descriptor {i}")
    crc = crc32c(buf[:4] + b"\0\0\0\0" + buf[8:])
    for _ in range(max(0, total - desc)):
        more = _read_sectors(win, log, 1)
        if len(more) != 1:
            return None
        crc = crc32c(more[0], crc)
    if crc != int.from_bytes(buf[4:8], "little"):
        return None
    return h


def log_needs_replay(win: Window, h: VhdxHeader) -> bool:
    """``vhdx_log_search``: whether the log holds a valid sequence (qemu
    then refuses a read-only open).  _LogError where qemu's search fails.

    The search's only state from one entry to the next is the read index:
    it is kept in ``win.memo``, so a call that NeedBytes interrupted goes on
    from the entry it had reached instead of searching the log again."""
    log = _Log(h.log_offset, h.log_length)
    memo = win.memo
    key = ("vhdx log search", h.log_offset, h.log_length, h.log_guid)
    log.read = memo.get(key, 0)
    while True:
        tail = memo[key] = log.read
        seq = 0
        found = _validate_entry(win, log, seq, h.log_guid)
        if found is not None:
            return True
        if log.read < tail:
            return False


def _check_log(win: Window, h: VhdxHeader, base: int) -> None:
    if h.log_offset < LOG_MIN_SIZE or h.log_offset % LOG_MIN_SIZE:
        raise _bad(
            f"log_offset {h.log_offset:#x} not a non-zero multiple of 1 MiB", "log_offset", base + 72, h.log_offset
        )
    if h.log_version != 0:
        raise _unsupported(f"log_version {h.log_version} unsupported (only 0)", "log_version", base + 64, h.log_version)
    if h.log_guid == bytes(16) or h.log_length == 0:
        return
    if h.log_length % LOG_MIN_SIZE:
        raise _bad(f"log_length {h.log_length} not a multiple of 1 MiB", "log_length", base + 68, h.log_length)
    try:
        replay = log_needs_replay(win, h)
    except _LogError as exc:
        raise _bad(f"the log is corrupt: {exc}", "log", h.log_offset) from None
    if replay:
        raise _unsupported(
            "the log needs to be replayed (qemu refuses a read-only open; 'qemu-img check -r all' replays it)",
            "log_guid",
            base + 48,
        )


# -- region table and metadata -----------------------------------------------------


def _records(layout: Struct, buf: bytes) -> Iterator[tuple[Any, ...]]:
    """The records of a flat ``layout`` that fill ``buf`` one after another
    (a table's entries), unpacked in one C loop.  ``buf`` comes from
    read_padded, whose length is the table's: a whole number of records."""
    return flat(layout).struct.iter_unpack(buf)


def _overlaps(regions: Sequence[tuple[int, int]], start: int, length: int) -> bool:
    end = start + length
    for r_start, r_end in regions:  # noqa: SIM110 (a loop: faster than any() over a generator)
        if start < r_end and end > r_start:
            return True
    return False


def _region_table(win: Window, regions: list[tuple[int, int]]) -> tuple[RegionTableEntry, RegionTableEntry]:
    base = REGION_TABLE_OFFSET
    buf = read_padded(win, base, HEADER_BLOCK_SIZE, NAME, "region table", ahead=HEADER_BLOCK_SIZE)
    sig, _cs, count, _r = unpack(REGION_TABLE_HEADER, buf[:16], NAME, "region table", base)
    if not checksum_ok(buf):
        raise _bad("region table checksum mismatch", "region table checksum", base + 4)
    if sig != REGION_SIGNATURE:
        raise _bad(f"bad region table signature {sig!r}", "region table signature", base, sig)
    if count > REGION_TABLE_MAX_ENTRIES:
        raise _bad(f"{count} region table entries (at most 2047)", "entry_count", base + 8, count)
    bat = metadata = None
    for i, e in enumerate(_records(REGION_TABLE_ENTRY, buf[16 : 16 + 32 * count])):
        at = 16 + 32 * i
        guid, file_offset, length, data_bits = e
        if _overlaps(regions, file_offset, length):
            raise _bad(
                f"region {i} at {file_offset:#x} overlaps another region or the log", "file_offset", base + at + 16
            )
        regions.append((file_offset, file_offset + length))
        if guid == BAT_GUID:
            if bat is not None:
                raise _bad("two BAT regions", "guid", base + at)
            bat = RegionTableEntry._make(e)
        elif guid == METADATA_GUID:
            if metadata is not None:
                raise _bad("two metadata regions", "guid", base + at)
            metadata = RegionTableEntry._make(e)
        elif data_bits & REGION_ENTRY_REQUIRED:
            raise _unsupported(f"unknown required region {uuid.UUID(bytes_le=guid)}", "guid", base + at)
    if bat is None or metadata is None:
        raise _bad("the region table lacks the BAT or the metadata region", "region table", base)
    return bat, metadata


#: What is read with the metadata table: the table, and the first 4 KiB after it, where qemu (and
#: Hyper-V) put the items (qemu: file parameters at 64 KiB, then the others, 40 bytes in all).
_METADATA_AHEAD = METADATA_TABLE_MAX_SIZE + 4 * KiB
#: The part of the metadata table looked at first: its header and 15 entries (qemu writes 5).
_METADATA_HEAD = 512
#: The items are read in one piece when they lie this close together (else one by one).
_ITEMS_AHEAD_MAX = 64 * KiB


def _metadata_entries(win: Window, md: RegionTableEntry, ahead: int = _METADATA_AHEAD) -> dict[bytes, tuple[int, int]]:
    """The known items of the metadata table: GUID -> (offset in the
    metadata region, length), with qemu's refusals on the table itself.
    ``ahead``: how much to read from the table's start if it must be read."""
    base = md.file_offset
    # (the 64 KiB table as qemu reads it, zeros past the end of the file; only its entries are looked at)
    buf = read_padded(win, base, _METADATA_HEAD, NAME, "metadata table", ahead=ahead)
    sig, _r, count, _r2 = unpack(METADATA_TABLE_HEADER, buf[:32], NAME, "metadata table", base)
    if sig != METADATA_SIGNATURE:
        raise _bad(f"bad metadata table signature {sig!r}", "metadata signature", base, sig)
    if count * 32 > METADATA_TABLE_MAX_SIZE - 32:
        raise _bad(f"{count} metadata entries do not fit the table", "entry_count", base + 10, count)
    if 32 + 32 * count > _METADATA_HEAD:
        buf = read_padded(win, base, 32 + 32 * count, NAME, "metadata table", ahead=METADATA_TABLE_MAX_SIZE)
    items: dict[bytes, tuple[int, int]] = {}
    for i, (item, offset, length, bits, _r3) in enumerate(_records(METADATA_TABLE_ENTRY, buf[32 : 32 + 32 * count])):
        at = 32 + 32 * i
        if item in _ITEMS:
            if item in items:
                raise _bad(f"metadata item {_ITEMS[item]!r} twice", "item_id", base + at)
            items[item] = (offset, length)
        elif bits & META_FLAGS_IS_REQUIRED:
            raise _unsupported(f"unknown required metadata item {uuid.UUID(bytes_le=item)}", "item_id", base + at)
    return items


def _item(win: Window, md: RegionTableEntry, items: dict[bytes, tuple[int, int]], guid: bytes, size: int) -> bytes:
    return read_padded(win, md.file_offset + items[guid][0], size, NAME, _ITEMS[guid])


def decode_parent_locator(raw: bytes) -> ParentLocator:
    """The key/value pairs of a parent locator item (UTF-16LE strings at
    offsets from the item's start).  Pairs that do not fit are skipped."""
    locator_type, _r, count = unpack(PARENT_LOCATOR_HEADER, raw[:20].ljust(20, b"\0"), NAME, "parent locator", 0)
    pairs = []
    for i in range(count):
        at = 20 + 12 * i
        if at + 12 > len(raw):
            break
        ko, vo, kl, vl = unpack(PARENT_LOCATOR_ENTRY, raw[at : at + 12], NAME, "parent locator entry", at)
        if ko + kl > len(raw) or vo + vl > len(raw):
            continue
        key = raw[ko : ko + kl].decode("utf-16-le", "replace")
        value = raw[vo : vo + vl].decode("utf-16-le", "replace")
        pairs.append((key, value))
    return ParentLocator(locator_type, tuple(pairs))


#: imgchain's cap on a parent locator item (the spec's limit on a metadata item is 1 MiB).
MAX_PARENT_LOCATOR = MiB


def named_files(data: bytes | Window) -> tuple[Reference, ...]:
    """The files a differencing VHDX's parent locator names (kind
    ``parent-locator``), read even though qemu refuses such an image:
    Hyper-V opens them.  () when the headers, region table or metadata table
    cannot be read, or there is no parent locator."""
    win = as_window(data)
    done = win.memo.get(_PROGRESS)  # (what decode() found in this window stands: refused images come here after it)
    try:
        if done is None or done.header is None:
            _headers(win)
        if done is not None and done.regions is not None:  # (found with the log as one more region: so too without)
            md = done.regions[1]
        else:
            _bat, md = _region_table(win, [])
        items = _metadata_entries(win, md, METADATA_TABLE_MAX_SIZE)  # (not the items: a parent locator instead)
    except FormatError:
        return ()
    if PARENT_LOCATOR_GUID not in items:
        return ()
    offset, length = items[PARENT_LOCATOR_GUID]
    length = min(length, MAX_PARENT_LOCATOR)
    raw = read_padded(win, md.file_offset + offset, length, NAME, "parent locator", ahead=length)
    loc = decode_parent_locator(raw)
    return tuple(Reference("parent-locator", v, "image", NAME) for k, v in loc.entries if k in PATH_KEYS and v)


_FILE_IDENTIFIER_SIZE = FILE_IDENTIFIER.sizeof()


class _Progress:
    """What :func:`decode` worked out from one window so far, kept in
    ``win.memo``: a call that NeedBytes interrupted (the probe reads the
    bytes and calls again from the start) takes up where it stopped.  The
    bytes at an offset never change within a window, so each step's result
    stands; a step that raised left nothing here."""

    __slots__ = ("creator", "current", "header", "log_checked", "params", "regions")

    def __init__(self) -> None:
        self.creator: str | None = None
        self.header: VhdxHeader | None = None
        self.current = 0
        self.log_checked = False
        self.regions: tuple[RegionTableEntry, RegionTableEntry, tuple[tuple[int, int], ...]] | None = None
        self.params: tuple[int, int, int, int, int, int] | None = None


_PROGRESS = ("vhdx", "decode")


def decode(data: bytes | Window) -> VhdxImage:
    """Decode a VHDX as qemu 7.2 opens it read-only (``qemu-img info``)."""
    win = as_window(data)
    memo = win.memo
    done = memo.get(_PROGRESS)
    if done is None:
        done = memo[_PROGRESS] = _Progress()
    if done.creator is None:
        ident = read_padded(win, 0, _FILE_IDENTIFIER_SIZE, NAME, "file identifier")
        if ident[:8] != FILE_SIGNATURE:
            raise _bad(f"bad file signature {ident[:8]!r}, expected {FILE_SIGNATURE!r}", "signature", 0, ident[:8])
        done.creator = ident[8:].decode("utf-16-le", "replace").split("\0", 1)[0]
    h = done.header
    if h is None:
        h, done.current = _headers(win)
        done.header = h
    if not done.log_checked:
        _check_log(win, h, (HEADER1_OFFSET, HEADER2_OFFSET)[done.current])
        done.log_checked = True
    if done.regions is None:
        found = [(h.log_offset, h.log_offset + h.log_length)]
        bat, md = _region_table(win, found)
        done.regions = bat, md, tuple(found)
    bat, md, regions = done.regions
    if done.params is None:
        done.params = _parameters(win, md)
    block_size, bits, vds, lss, pss, chunk_ratio = done.params
    image = VhdxImage(h, done.current, bat, md, block_size, bits, vds, lss, pss, done.creator)
    _check_bat(win, image, regions, chunk_ratio)
    return image


def _parameters(win: Window, md: RegionTableEntry) -> tuple[int, int, int, int, int, int]:
    """The metadata items, as qemu checks them: block size, file parameter
    bits, virtual disk size, logical and physical sector size, and the
    chunk ratio."""
    items = _metadata_entries(win, md)
    if set(items) != _REQUIRED_ITEMS:
        missing = ", ".join(_ITEMS[g] for g in _REQUIRED_ITEMS - set(items))
        extra = ", ".join(_ITEMS[g] for g in set(items) - _REQUIRED_ITEMS)
        raise _unsupported(
            f"metadata items unsupported: missing {missing or 'none'}; not supported: {extra or 'none'}"
            + (" (a differencing disk: qemu opens no VHDX with a parent)" if extra else ""),
            "metadata",
            md.file_offset,
        )
    fp, vds_raw, lss_raw, pss_raw = _items(win, md, items)
    block_size, bits = unpack(FILE_PARAMETERS, fp, NAME, "file parameters", 0)
    if bits & PARAMS_HAS_PARENT:  # without a locator item: EINVAL
        raise _bad(
            "has_parent set without a parent locator",
            "file parameters",
            md.file_offset + items[FILE_PARAMETERS_GUID][0],
        )
    vds = int.from_bytes(vds_raw, "little")
    lss = int.from_bytes(lss_raw, "little")
    pss = int.from_bytes(pss_raw, "little")
    fp_at = md.file_offset + items[FILE_PARAMETERS_GUID][0]
    if not BLOCK_SIZE_MIN <= block_size <= BLOCK_SIZE_MAX:
        raise _bad(f"block size {block_size} outside 1 MiB..256 MiB", "block_size", fp_at, block_size)
    if lss not in (512, 4096):
        raise _bad(
            f"logical sector size {lss} unsupported (512 or 4096)",
            "logical sector size",
            md.file_offset + items[LOGICAL_SECTOR_SIZE_GUID][0],
            lss,
        )
    if lss != 512:
        raise _unsupported(
            "logical sector size 4096 unsupported (qemu supports 512 only)",
            "logical sector size",
            md.file_offset + items[LOGICAL_SECTOR_SIZE_GUID][0],
            lss,
        )
    sectors_per_block = block_size // lss
    chunk_ratio = MAX_SECTORS_PER_BLOCK * lss // block_size
    for value in (sectors_per_block, chunk_ratio, block_size):
        if value & (value - 1):
            raise _bad(f"block size {block_size} is not a power of two", "block_size", fp_at, block_size)
    return block_size, bits, vds, lss, pss, chunk_ratio


_ITEM_SIZES = (
    (FILE_PARAMETERS_GUID, 8),
    (VIRTUAL_DISK_SIZE_GUID, 8),
    (LOGICAL_SECTOR_SIZE_GUID, 4),
    (PHYSICAL_SECTOR_SIZE_GUID, 4),
)


def _items(win: Window, md: RegionTableEntry, items: dict[bytes, tuple[int, int]]) -> tuple[bytes, ...]:
    """The file parameters, virtual disk size, logical and physical sector
    size items, as qemu reads them (zeros past the end of the file): in one
    read when they lie close together, as they always do."""
    fp = items[FILE_PARAMETERS_GUID][0]
    vds = items[VIRTUAL_DISK_SIZE_GUID][0]
    lss = items[LOGICAL_SECTOR_SIZE_GUID][0]
    pss = items[PHYSICAL_SECTOR_SIZE_GUID][0]
    lo = min(fp, vds, lss, pss)
    hi = max(fp + 8, vds + 8, lss + 4, pss + 4)
    if hi - lo > _ITEMS_AHEAD_MAX:
        return tuple(_item(win, md, items, guid, size) for guid, size in _ITEM_SIZES)
    raw = read_padded(win, md.file_offset + lo, hi - lo, NAME, "metadata items")
    fp, vds, lss, pss = fp - lo, vds - lo, lss - lo, pss - lo
    return raw[fp : fp + 8], raw[vds : vds + 8], raw[lss : lss + 4], raw[pss : pss + 4]


def _check_bat(win: Window, image: VhdxImage, regions: Sequence[tuple[int, int]], chunk_ratio: int) -> None:
    """The BAT's size, and ``vhdx_check_bat_entries``."""
    bs = image.block_size
    data_blocks = -(-image.virtual_disk_size // bs) & 0xFFFFFFFF
    entries = (data_blocks + (((data_blocks - 1) & 0xFFFFFFFF) >> (chunk_ratio.bit_length() - 1))) & 0xFFFFFFFF
    bat = image.bat
    if entries > bat.length // 8:
        raise _bad(
            f"the BAT region ({bat.length} bytes) is too small for {entries} entries",
            "BAT length",
            REGION_TABLE_OFFSET,
            bat.length,
        )
    length = qemu_length(win)
    in_file = max(0, min(entries * 8, win.size - bat.file_offset))
    raw = read_padded(win, bat.file_offset, in_file, NAME, "BAT", ahead=in_file) if in_file else b""
    count = min(entries, len(raw) // 8)
    if _bat_passes(raw, count, bs, length, regions):
        return
    total = image.virtual_size
    payblocks = chunk_ratio
    for i in range(count):
        entry = int.from_bytes(raw[8 * i : 8 * i + 8], "little")
        if entry & BAT_STATE_MASK != PAYLOAD_BLOCK_FULLY_PRESENT:
            continue
        offset = entry & BAT_FILE_OFF_MASK
        block_length = min(bs, (total - i * bs) % (1 << 64)) & 0xFFFFFFFF
        if offset > INT64_MAX - bs:
            raise _bad(f"BAT entry {i} offset overflow", "BAT", bat.file_offset + 8 * i, entry)
        if offset >= length or offset + block_length > length:
            raise TruncatedError(
                NAME,
                f"BAT entry {i} points at {offset:#x}, after the end of the file ({length}): truncated",
                field="BAT",
                offset=bat.file_offset + 8 * i,
            )
        if payblocks:
            payblocks -= 1
            if _overlaps(regions, offset, bs):
                raise _bad(f"BAT entry {i} at {offset:#x} overlaps a region", "BAT", bat.file_offset + 8 * i, entry)
        else:
            payblocks = chunk_ratio


#: Per low byte of a BAT entry: 1 if its state is "fully present", else 0.
_FULLY_PRESENT = bytes(int(b & BAT_STATE_MASK == PAYLOAD_BLOCK_FULLY_PRESENT) for b in range(256))
#: Per third byte of a BAT entry: what BAT_FILE_OFF_MASK keeps of it.
_OFFSET_BITS_OF_THIRD_BYTE = bytes(b & (BAT_FILE_OFF_MASK >> 16) & 0xFF for b in range(256))


def _bat_passes(raw: bytes, count: int, bs: int, length: int, regions: Sequence[tuple[int, int]]) -> bool:
    """Whether the first ``count`` BAT entries in ``raw`` pass the checks of
    :func:`_check_bat`'s loop, looked at all at once (in C): no fully
    present block past the end of the file or overflowing, none that could
    overlap a region.  False: the loop looks at each in turn (it says which
    entry fails first, or finds that none of the blocks it checks for
    overlaps does)."""
    present = raw[: 8 * count : 8].translate(_FULLY_PRESENT)  # (entries are little-endian: the state is in byte 0)
    if 1 not in present:  # the usual case: a dynamic disk's blocks are absent, or zero
        return True
    masked = bytearray(raw[: 8 * count])
    masked[0::8] = bytes(count)
    masked[1::8] = bytes(count)
    masked[2::8] = masked[2::8].translate(_OFFSET_BITS_OF_THIRD_BYTE)
    offsets = sorted(compress(struct.unpack(f"<{count}Q", masked), present))
    if offsets[-1] > INT64_MAX - bs or offsets[-1] + bs > length:
        return False
    for start, end in regions:  # a block [o, o + bs) overlaps [start, end) when start - bs < o < end
        i = bisect_right(offsets, start - bs)
        if i < len(offsets) and offsets[i] < end:
            return False
    return True
