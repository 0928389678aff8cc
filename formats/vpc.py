"""vpc: Microsoft's Virtual Hard Disk (VHD), as qemu 7.2's ``block/vpc.c``
opens it.

Layouts and field names are those of Microsoft's *Virtual Hard Disk Image
Format Specification* (the "Hard Disk Footer" and the "Dynamic Disk
Header", big-endian), in snake case; the rules are qemu 7.2's ``vpc_open``:

* **Probe** (``vpc_probe``): 100 when the file starts with ``conectix``.  A
  fixed disk has its footer only at the end, so qemu probes it as **raw**;
  opened with ``-f vpc``, it is found by the footer in the last 512 bytes
  of the file (its length rounded up to 512), which must say disk type 2
  (fixed), else "invalid VPC image".
* **Checksum**: the footer's checksum (one's complement of the byte sum,
  the checksum field taken as zero) must match, else "Incorrect header
  checksum".
* **Virtual size**: cylinders x heads x sectors per track (CHS), except that
  ``current_size`` counts when the creator application is ``win ``, ``qem2``
  (qemu-img's ``force_size``), ``d2v ``, ``CTXS`` or ``tap\\0``, or the
  geometry is the maximum (65535/16/255).  At most ``VHD_MAX_SECTORS``
  sectors ("File too large").
* **Dynamic disks** (a footer at 0, whatever its disk type says): the
  dynamic disk header at ``data_offset`` ("cxsparse"), a power-of-two block
  size of at least 512, at most 2**32 blocks, a BAT of ``max_table_entries``
  (at most INT_MAX/4) covering the disk ("Page table too small"), and no
  block past the end of the file ("free_data_block_offset points after the
  end of file").
* A **differencing** disk (type 4) is opened as a plain dynamic disk: qemu
  ignores its parent.  Its parent locators still name files that Hyper-V
  and VirtualBox open: :attr:`VpcImage.references` lists them (kind
  ``parent-locator``), with the UTF-16 parent name of the header.

``qemu-img info`` prints ``cluster-size`` (the block size) unless the
footer says disk type 2, and ``dirty-flag: false``; vpc has no
format-specific data.  Reads past the end of the file read zeros, as in qemu
(see ``formats._qemuread``).  Pure: see ``formats._base``.
"""

from __future__ import annotations

from typing import NamedTuple

from construct import Bytes, Int8ub, Int16ub, Int32ub, Int64ub, Struct

from imgchain.errors import FormatError, TruncatedError, UnsupportedFeatureError

from ._base import Reference, Window, as_window, has_none_of, unpack
from ._qemuread import SECTOR, qemu_length, read_padded, readable

NAME = "vpc"
COOKIE = b"conectix"
DYNAMIC_COOKIE = b"cxsparse"

HARD_DISK_FOOTER = Struct(
    "cookie" / Bytes(8),  # 0, "conectix"
    "features" / Int32ub,  # 8
    "file_format_version" / Int32ub,  # 12
    "data_offset" / Int64ub,  # 16, the dynamic disk header (dynamic, differencing)
    "time_stamp" / Int32ub,  # 24, seconds since 2000-01-01 UTC
    "creator_application" / Bytes(4),  # 28, "qemu", "qem2", "win ", "vpc " ...
    "creator_version" / Int32ub,  # 32
    "creator_host_os" / Bytes(4),  # 36, "Wi2k", "Mac "
    "original_size" / Int64ub,  # 40, bytes
    "current_size" / Int64ub,  # 48, bytes
    "cylinders" / Int16ub,  # 56, "Disk Geometry"
    "heads" / Int8ub,  # 58
    "sectors_per_track" / Int8ub,  # 59
    "disk_type" / Int32ub,  # 60, 2 fixed, 3 dynamic, 4 differencing
    "checksum" / Int32ub,  # 64
    "unique_id" / Bytes(16),  # 68
    "saved_state" / Int8ub,  # 84
    "reserved" / Bytes(427),  # 85
)
"""The Hard Disk Footer (512 bytes): at the end of every VHD, and a copy at 0
in dynamic and differencing disks."""

PARENT_LOCATOR_ENTRY = Struct(
    "platform_code" / Bytes(4),
    "platform_data_space" / Int32ub,
    "platform_data_length" / Int32ub,
    "reserved" / Int32ub,
    "platform_data_offset" / Int64ub,
)
"""One of the eight Parent Locator Entries (24 bytes)."""

DYNAMIC_DISK_HEADER = Struct(
    "cookie" / Bytes(8),  # 0, "cxsparse"
    "data_offset" / Int64ub,  # 8, unused (0xFFFFFFFF...)
    "table_offset" / Int64ub,  # 16, the Block Allocation Table
    "header_version" / Int32ub,  # 24
    "max_table_entries" / Int32ub,  # 28
    "block_size" / Int32ub,  # 32
    "checksum" / Int32ub,  # 36
    "parent_unique_id" / Bytes(16),  # 40
    "parent_time_stamp" / Int32ub,  # 56
    "reserved" / Int32ub,  # 60
    "parent_unicode_name" / Bytes(512),  # 64, UTF-16 big-endian
)
"""The Dynamic Disk Header's first 576 bytes; eight
:data:`PARENT_LOCATOR_ENTRY` follow at 576, then 256 reserved bytes (1024 in
all)."""

FOOTER_SIZE = HARD_DISK_FOOTER.sizeof()  # 512
DYNAMIC_HEADER_SIZE = 1024
_DYN_FIXED_SIZE = DYNAMIC_DISK_HEADER.sizeof()  # 576
_LOCATOR_SIZE = PARENT_LOCATOR_ENTRY.sizeof()  # 24
NUM_PARENT_LOCATORS = 8

FOOTER_OFFSETS = {
    "cookie": 0,
    "data_offset": 16,
    "creator_application": 28,
    "current_size": 48,
    "cylinders": 56,
    "disk_type": 60,
    "checksum": 64,
}
DYNAMIC_OFFSETS = {"cookie": 0, "table_offset": 16, "max_table_entries": 28, "block_size": 32}

DISK_TYPE_FIXED, DISK_TYPE_DYNAMIC, DISK_TYPE_DIFFERENCING = 2, 3, 4
DISK_TYPE_NAMES = {DISK_TYPE_FIXED: "fixed", DISK_TYPE_DYNAMIC: "dynamic", DISK_TYPE_DIFFERENCING: "differencing"}

#: The creator applications whose images qemu sizes by ``current_size``.
CURRENT_SIZE_CREATORS = (b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\0")
VHD_CHS_MAX = (65535, 16, 255)
VHD_MAX_GEOMETRY = 65535 * 16 * 255
VHD_MAX_SECTORS = 0xFF000000  # 2040 GiB
UNALLOCATED = 0xFFFFFFFF
INT_MAX = (1 << 31) - 1

#: Parent locator platform codes (the VHD spec's "Platform Code").
PLATFORM_NONE = b"\0\0\0\0"
PLATFORM_W2RU = b"W2ru"  # Windows relative path, UTF-16 little-endian
PLATFORM_W2KU = b"W2ku"  # Windows absolute path, UTF-16 little-endian
PLATFORM_WI2R = b"Wi2r"  # deprecated: Windows relative path, ANSI
PLATFORM_WI2K = b"Wi2k"  # deprecated: Windows absolute path, ANSI
PLATFORM_MAC = b"Mac "  # a Mac OS alias (a binary blob, not a name)
PLATFORM_MACX = b"MacX"  # a file URL, UTF-8
#: imgchain's cap on one locator's data (a Windows path is at most 32767
#: UTF-16 units); a longer one is listed without a name.
MAX_LOCATOR_DATA = 65536


class HardDiskFooter(NamedTuple):
    cookie: bytes
    features: int
    file_format_version: int
    data_offset: int
    time_stamp: int
    creator_application: bytes
    creator_version: int
    creator_host_os: bytes
    original_size: int
    current_size: int
    cylinders: int
    heads: int
    sectors_per_track: int
    disk_type: int
    checksum: int
    unique_id: bytes
    saved_state: int
    reserved: bytes


class DynamicDiskHeader(NamedTuple):
    cookie: bytes
    data_offset: int
    table_offset: int
    header_version: int
    max_table_entries: int
    block_size: int
    checksum: int
    parent_unique_id: bytes
    parent_time_stamp: int
    reserved: int
    parent_unicode_name: bytes


class ParentLocator(NamedTuple):
    """One used parent locator entry, and the name its data holds (None for
    a Mac alias, a locator past the end of the file or too long)."""

    entry: int  #: which of the eight entries
    platform_code: bytes
    platform_data_space: int
    platform_data_length: int
    platform_data_offset: int
    name: str | None


@has_none_of("backing_filename", "backing_format", "dirty", "corrupt", "encrypted", "data_file")
class VpcImage(NamedTuple):
    """A VHD as qemu opens it."""

    footer: HardDiskFooter
    footer_offset: int  #: 0, or the end of the file for a fixed disk
    dynamic_header: DynamicDiskHeader | None  #: None for a fixed disk
    virtual_size: int
    checksum_ok: bool  #: always True: qemu refuses a bad checksum
    parent_name: str | None  #: the dynamic header's Parent Unicode Name (differencing disks)
    parent_locators: tuple[ParentLocator, ...]
    free_data_block_offset: int | None  #: where qemu would append (dynamic disks)

    @property
    def format(self) -> str:
        return NAME

    @property
    def subformat(self) -> str:
        """How qemu opens it: ``fixed`` (footer at the end) or ``dynamic``."""
        return "dynamic" if self.dynamic_header is not None else "fixed"

    @property
    def disk_type(self) -> int:
        return self.footer.disk_type

    @property
    def differencing(self) -> bool:
        return self.footer.disk_type == DISK_TYPE_DIFFERENCING

    @property
    def cluster_size(self) -> int | None:
        """What qemu-img prints: the block size, unless the footer says
        fixed (``vpc_get_info`` looks at the footer's type only)."""
        if self.footer.disk_type == DISK_TYPE_FIXED or self.dynamic_header is None:
            return None
        return self.dynamic_header.block_size

    @property
    def info_dirty_flag(self) -> bool | None:
        """``dirty-flag`` as qemu-img prints it (vpc has ``bdrv_get_info``)."""
        return False

    @property
    def references(self) -> tuple[Reference, ...]:
        """The files the parent locators name (qemu ignores them; Hyper-V
        and VirtualBox open them)."""
        return tuple(Reference("parent-locator", p.name, "image", NAME) for p in self.parent_locators if p.name)


def probe(buf: bytes, filename: str | None = None) -> int:
    """qemu's ``vpc_probe``: 100 for ``conectix`` at 0, else 0."""
    return 100 if buf[:8] == COOKIE else 0


def sniff(buf: bytes) -> bool:
    return probe(buf) > 0


def _bad(reason: str, field: str, offset: int, value: object = None) -> FormatError:
    return FormatError(NAME, reason, field=field, offset=offset, value=value)


def vpc_checksum(data: bytes) -> int:
    """The VHD checksum: one's complement of the sum of the bytes."""
    return ~sum(data) & 0xFFFFFFFF


def _footer(win: Window) -> tuple[HardDiskFooter, int, bool]:
    """The footer qemu uses, where it found it, and whether that is a fixed
    disk's (found at the end)."""
    raw = read_padded(win, 0, FOOTER_SIZE, NAME, "footer")
    offset, fixed = 0, False
    if raw[:8] != COOKIE:
        length = qemu_length(win)
        if length < FOOTER_SIZE:
            raise TruncatedError(NAME, "file too small for a VHD footer", field="cookie", offset=0, value=raw[:8])
        offset, fixed = length - FOOTER_SIZE, True
        raw = read_padded(win, offset, FOOTER_SIZE, NAME, "footer")
        f = HardDiskFooter._make(unpack(HARD_DISK_FOOTER, raw, NAME, "footer", offset))
        if f.cookie != COOKIE or f.disk_type != DISK_TYPE_FIXED:
            raise _bad(
                f"invalid VPC image: no 'conectix' at 0, nor a fixed disk's footer at {offset}",
                "cookie",
                offset,
                f.cookie,
            )
    else:
        f = HardDiskFooter._make(unpack(HARD_DISK_FOOTER, raw, NAME, "footer", offset))
    summed = vpc_checksum(raw[:64] + b"\0\0\0\0" + raw[68:])
    if summed != f.checksum:
        raise _bad(
            f"incorrect header checksum {f.checksum:#010x} (computed {summed:#010x})",
            "checksum",
            offset + FOOTER_OFFSETS["checksum"],
            f.checksum,
        )
    return f, offset, fixed


def total_sectors(f: HardDiskFooter) -> int:
    """The disk's size in sectors, by qemu 7.2's rule (CHS or current_size)."""
    sectors = f.cylinders * f.heads * f.sectors_per_track
    use_chs = f.creator_application not in CURRENT_SIZE_CREATORS
    if not use_chs or sectors == VHD_MAX_GEOMETRY:
        sectors = f.current_size // SECTOR
    return sectors


def _locator_name(win: Window, code: bytes, offset: int, length: int) -> str | None:
    if code == PLATFORM_MAC or length <= 0 or length > MAX_LOCATOR_DATA or offset + length > win.size:
        return None
    raw = win.get(offset, length, NAME, "parent locator data", offset)
    if code in (PLATFORM_W2RU, PLATFORM_W2KU):
        text = raw[: len(raw) & ~1].decode("utf-16-le", "replace")
    elif code == PLATFORM_MACX:
        text = raw.decode("utf-8", "surrogateescape")
    else:  # Wi2r, Wi2k: ANSI
        text = raw.decode("latin-1")
    return text.split("\0", 1)[0] or None


def _parent_locators(win: Window, raw: bytes, base: int) -> tuple[ParentLocator, ...]:
    out = []
    for i in range(NUM_PARENT_LOCATORS):
        at = _DYN_FIXED_SIZE + i * _LOCATOR_SIZE
        code, space, length, _reserved, offset = unpack(
            PARENT_LOCATOR_ENTRY, raw[at : at + _LOCATOR_SIZE], NAME, "parent locator", base + at
        )
        if code == PLATFORM_NONE:
            continue
        out.append(ParentLocator(i, code, space, length, offset, _locator_name(win, code, offset, length)))
    return tuple(out)


def decode(data: bytes | Window) -> VpcImage:
    """Decode a VHD as qemu 7.2 opens it with ``-f vpc`` (a fixed disk
    included).  ``data`` is the whole file, or a :class:`Window` on it."""
    win = as_window(data)
    f, footer_offset, fixed = _footer(win)
    sectors = total_sectors(f)
    if sectors > VHD_MAX_SECTORS:
        raise UnsupportedFeatureError(
            NAME,
            f"disk of {sectors} sectors too large (at most {VHD_MAX_SECTORS}, 2040 GiB)",
            field="current_size",
            offset=footer_offset + FOOTER_OFFSETS["current_size"],
            value=sectors,
        )
    if fixed:
        return VpcImage(f, footer_offset, None, sectors * SECTOR, True, None, (), None)

    base = f.data_offset
    if not readable(base, DYNAMIC_HEADER_SIZE):
        raise _bad(
            f"data_offset {base:#x} beyond what qemu can read", "data_offset", FOOTER_OFFSETS["data_offset"], base
        )
    raw = read_padded(win, base, DYNAMIC_HEADER_SIZE, NAME, "dynamic disk header")
    h = DynamicDiskHeader._make(unpack(DYNAMIC_DISK_HEADER, raw[:_DYN_FIXED_SIZE], NAME, "dynamic disk header", base))
    if h.cookie != DYNAMIC_COOKIE:
        raise _bad(
            f"invalid dynamic disk header magic {h.cookie!r}, expected {DYNAMIC_COOKIE!r}", "cookie", base, h.cookie
        )
    bs = h.block_size
    if bs < SECTOR or bs & (bs - 1):
        raise _bad(f"invalid block size {bs}", "block_size", base + DYNAMIC_OFFSETS["block_size"], bs)
    bitmap_size = ((bs // (8 * SECTOR)) + 511) & ~511
    entries = h.max_table_entries
    if (sectors * SECTOR) // bs > 0xFFFFFFFF:
        raise _bad("too many blocks", "block_size", base + DYNAMIC_OFFSETS["block_size"], bs)
    if entries * bs < sectors * SECTOR:
        raise _bad(
            f"page table too small: {entries} blocks of {bs} bytes for {sectors * SECTOR} bytes",
            "max_table_entries",
            base + DYNAMIC_OFFSETS["max_table_entries"],
            entries,
        )
    if entries > INT_MAX // 4:
        raise _bad(
            f"max_table_entries {entries} too large",
            "max_table_entries",
            base + DYNAMIC_OFFSETS["max_table_entries"],
            entries,
        )
    table, size = h.table_offset, entries * 4
    if not readable(table, size):
        raise _bad(f"table_offset {table:#x} beyond what qemu can read", "table_offset", base + 16, table)
    length = qemu_length(win)
    free = (table + size + 511) & ~511
    if free > length:
        raise TruncatedError(
            NAME,
            f"the block allocation table ends at {table + size}, past the end of the file ({win.size}): truncated",
            field="table_offset",
            offset=base + DYNAMIC_OFFSETS["table_offset"],
        )
    bat = read_padded(win, table, size, NAME, "block allocation table", ahead=size)
    step = bitmap_size + bs
    for i in range(0, size, 4):
        entry = int.from_bytes(bat[i : i + 4], "big")
        if entry != UNALLOCATED:
            free = max(free, SECTOR * entry + step)
    if free > length:
        raise TruncatedError(
            NAME,
            f"free_data_block_offset {free} points after the end of file ({length}): the image has been truncated",
            field="table_offset",
            offset=base + DYNAMIC_OFFSETS["table_offset"],
        )
    parent_name = None
    if f.disk_type == DISK_TYPE_DIFFERENCING:
        parent_name = h.parent_unicode_name.decode("utf-16-be", "replace").split("\0", 1)[0] or None
    locators = _parent_locators(win, raw, base) if f.disk_type == DISK_TYPE_DIFFERENCING else ()
    return VpcImage(f, footer_offset, h, sectors * SECTOR, True, parent_name, locators, free)
