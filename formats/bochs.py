"""bochs: the Bochs emulator's growing disk image, as qemu 7.2's
``block/bochs.c`` opens it (read-only).

The header is qemu's ``struct bochs_header`` (Bochs' redolog header),
little-endian, 512 bytes; field names are qemu's.  The rules:

* **Probe** (``bochs_probe``): 100 when ``magic``, ``type`` and ``subtype``
  are the C strings ``Bochs Virtual HD Image``, ``Redolog`` and ``Growing``
  (``strcmp``: each ends with a NUL inside its field, or the comparison runs
  on into the next field) and ``version`` is 0x00020000 or 0x00010000.  A
  file with the magic alone is raw to qemu.
* **Open** (``bochs_open``): the same checks ("Image not in Bochs format");
  the disk size is ``redolog.disk`` (version 2, at 88) or
  ``redolog_v1.disk`` (version 1, at 84), in whole sectors, rounded down;
  ``catalog`` at most 0x100000 entries; ``extent`` a power of two from 512
  to 8 MiB; the catalog must cover the disk.  The catalog itself is read
  (zeros past the end of the file) but not checked.

``qemu-img info`` prints neither ``cluster-size`` nor ``dirty-flag`` (bochs
has no ``bdrv_get_info``).  Pure: see ``formats._base``.
"""

from __future__ import annotations

from typing import NamedTuple

from construct import Bytes, Int32ul, Int64ul, Struct

from imgchain.errors import FormatError

from ._base import Window, as_window, has_none_of, unpack
from ._qemuread import SECTOR, read_padded

NAME = "bochs"
HEADER_MAGIC = b"Bochs Virtual HD Image"
REDOLOG_TYPE = b"Redolog"
GROWING_TYPE = b"Growing"
HEADER_VERSION = 0x00020000
HEADER_V1 = 0x00010000
HEADER_SIZE = 512
MAX_CATALOG = 0x100000
MAX_EXTENT = 0x800000

BOCHS_HEADER = Struct(
    "magic" / Bytes(32),  # 0
    "type" / Bytes(16),  # 32
    "subtype" / Bytes(16),  # 48
    "version" / Int32ul,  # 64
    "header" / Int32ul,  # 68, size of the header: where the catalog starts
    "catalog" / Int32ul,  # 72, entries
    "bitmap" / Int32ul,  # 76, bitmap size
    "extent" / Int32ul,  # 80, extent size
    "redolog_reserved" / Int32ul,  # 84 (version 1: the low half of redolog_v1.disk)
    "redolog_disk" / Int64ul,  # 88, the disk size (version 2)
)
"""qemu's ``struct bochs_header`` up to ``extra.redolog.disk`` (96 of 512 bytes)."""

REDOLOG_V1_DISK = Struct("redolog_v1_disk" / Int64ul)
"""``extra.redolog_v1.disk``, at 84: the disk size of a version 1 header."""

OFFSETS = {"magic": 0, "type": 32, "subtype": 48, "version": 64, "header": 68, "catalog": 72, "extent": 80}
_FIXED = BOCHS_HEADER.sizeof()


class BochsHeader(NamedTuple):
    magic: bytes
    type: bytes
    subtype: bytes
    version: int
    header: int
    catalog: int
    bitmap: int
    extent: int
    redolog_reserved: int
    redolog_disk: int


def _cstr_eq(raw: bytes, at: int, want: bytes) -> bool:
    """C ``strcmp(raw + at, want) == 0``: ``want`` and then a NUL."""
    return raw[at : at + len(want) + 1] == want + b"\0"


def _is_bochs(raw: bytes) -> bool:
    return (
        _cstr_eq(raw, 0, HEADER_MAGIC)
        and _cstr_eq(raw, 32, REDOLOG_TYPE)
        and _cstr_eq(raw, 48, GROWING_TYPE)
        and int.from_bytes(raw[64:68], "little") in (HEADER_VERSION, HEADER_V1)
    )


@has_none_of(
    "cluster_size", "backing_filename", "backing_format", "dirty", "corrupt", "encrypted", "data_file", "references"
)
class BochsImage(NamedTuple):
    header: BochsHeader
    disk_size: int  #: bytes, as the header gives it

    @property
    def format(self) -> str:
        return NAME

    @property
    def virtual_size(self) -> int:
        return self.disk_size // SECTOR * SECTOR

    @property
    def info_dirty_flag(self) -> None:
        """qemu-img prints no dirty-flag for bochs."""
        return None


def probe(buf: bytes, filename: str | None = None) -> int:
    """qemu's ``bochs_probe`` on the (zero-padded) first 512 bytes."""
    return 100 if _is_bochs(buf[:HEADER_SIZE].ljust(HEADER_SIZE, b"\0")) else 0


def sniff(buf: bytes) -> bool:
    return probe(buf) > 0


def _bad(reason: str, field: str, value: object = None) -> FormatError:
    return FormatError(NAME, reason, field=field, offset=OFFSETS[field], value=value)


def decode(data: bytes | Window) -> BochsImage:
    """Decode and check a bochs header with qemu 7.2's ``bochs_open`` rules."""
    win = as_window(data)
    raw = read_padded(win, 0, HEADER_SIZE, NAME, "header")
    h = BochsHeader._make(unpack(BOCHS_HEADER, raw[:_FIXED], NAME, "header", 0))
    if not _is_bochs(raw):
        raise _bad("image not in Bochs format (magic, type, subtype or version)", "magic", h.magic)
    if h.version == HEADER_V1:
        (disk,) = unpack(REDOLOG_V1_DISK, raw[84:92], NAME, "redolog_v1.disk", 84)
    else:
        disk = h.redolog_disk
    if disk >= 1 << 63:  # qemu's int64 total_sectors: a negative size
        raise FormatError(
            NAME, f"disk size {disk} too large", field="redolog.disk", offset=84 if h.version == HEADER_V1 else 88
        )
    if h.catalog > MAX_CATALOG:
        raise _bad(f"catalog size {h.catalog} is too large (at most {MAX_CATALOG})", "catalog", h.catalog)
    extent = h.extent
    if extent < SECTOR:
        raise _bad(f"extent size {extent} must be at least 512", "extent", extent)
    if extent & (extent - 1):
        raise _bad(f"extent size {extent} is not a power of two", "extent", extent)
    if extent > MAX_EXTENT:
        raise _bad(f"extent size {extent} is too large", "extent", extent)
    sectors = disk // SECTOR
    per_extent = extent // SECTOR
    if h.catalog < -(-sectors // per_extent):
        raise _bad(f"catalog size {h.catalog} is too small for this disk size", "catalog", h.catalog)
    return BochsImage(h, disk)
