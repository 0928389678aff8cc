"""VMDK: sparse headers (VMDK4 ``KDMV``, VMDK3 ``COWD``, ESXi seSparse),
the streamOptimized footer, and text descriptors with their extent lines.

qemu has no VMDK spec in ``docs/interop``; the layouts are qemu's own
structs in ``block/vmdk.c`` (``VMDK4Header``, ``VMDK3Header``,
``VMDKSESparseConstHeader``), with their field names, and every rule is one
that qemu 7.2's ``vmdk_open`` applies:

* **Probe** (``vmdk_probe``): 100 for either magic; for text, 100 when,
  after ``#`` comment lines and lines of spaces (LF or CRLF), the first
  other line is ``version=1``, ``2`` or ``3`` (then LF or CRLF).  An empty
  line (no space on it) ends the search: the file is not vmdk.
* **Descriptor text** is read as a C string of at most
  :data:`DESC_READ_CAP` bytes (``vmdk_read_desc``; imgchain reads the file
  only as far as the string's NUL).  ``createType`` is found by substring
  search, its value up to the next ``"`` (at most 127 bytes), and must be
  one of :data:`DESCRIPTOR_CREATE_TYPES`.  Extent lines are read with
  qemu's ``sscanf`` pattern (emulated exactly here, whitespace across line
  ends included, by :func:`scan_extent_line`, and matched over the whole
  text by one regular expression that the tests hold to it); only ``RW``
  lines of types FLAT, SPARSE, VMFS, VMFSSPARSE and SESPARSE with a
  positive size are opened, the rest are skipped, and a malformed line
  refuses the image.
* **CID, parentCID, parentFileNameHint** are found by substring search in
  the first :data:`DESC_SIZE` bytes of the descriptor (at 0 in a descriptor
  file, at 0x200 in a sparse file, whatever ``desc_offset`` says).  A
  missing CID refuses the image; note ``strstr`` finds ``CID`` inside
  ``parentCID`` when no ``CID=`` line comes first.
* **Sparse files**: a VMDK4 header with ``capacity`` 0 and a
  ``desc_offset`` is a descriptor (extents and all); ``gd_offset`` of
  :data:`GD_AT_END` means the footer 1536 bytes before the end of the file
  holds the real header; a compressed (deflate) extent makes the image
  ``streamOptimized``.

Whatever needs another file (an extent's existence, its sparse header, the
parent's CID, which qemu checks only when it reads data) is left to the
walker: :attr:`VmdkImage.references` names the files, and
:func:`decode_extent_header` plus :meth:`VmdkImage.with_extent_headers`
complete the record from a sparse extent's header.

Pure: bytes in, immutable records out; see ``formats._base`` for the window
protocol.  Reads qemu makes past the end of a file yield zeros; so do ours
for descriptor text and the footer (:func:`_read_padded`).
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Sequence
from typing import NamedTuple

from construct import Bytes, Int16ul, Int32ul, Int64ul, Struct

from imgchain.errors import FormatError, TruncatedError, UnsupportedFeatureError

from ._base import Reference, Window, as_window, c_string, unpack

NAME = "vmdk"
VMDK4_MAGIC = b"KDMV"
VMDK3_MAGIC = b"COWD"

# -- layouts (qemu block/vmdk.c) ---------------------------------------------

VMDK4_HEADER = Struct(
    "magic" / Bytes(4),  # 0, "KDMV"
    "version" / Int32ul,  # 4
    "flags" / Int32ul,  # 8
    "capacity" / Int64ul,  # 12, sectors
    "granularity" / Int64ul,  # 20, sectors per grain
    "desc_offset" / Int64ul,  # 28, sectors
    "desc_size" / Int64ul,  # 36, sectors
    "num_gtes_per_gt" / Int32ul,  # 44
    "rgd_offset" / Int64ul,  # 48, sectors
    "gd_offset" / Int64ul,  # 56, sectors
    "grain_offset" / Int64ul,  # 64, sectors
    "filler" / Bytes(1),  # 72
    "check_bytes" / Bytes(4),  # 73, "\n \r\n"
    "compressAlgorithm" / Int16ul,  # 77
)
"""qemu's ``VMDK4Header`` after the magic (VMware's SparseExtentHeader)."""

VMDK3_HEADER = Struct(
    "magic" / Bytes(4),  # 0, "COWD"
    "version" / Int32ul,  # 4
    "flags" / Int32ul,  # 8
    "disk_sectors" / Int32ul,  # 12
    "granularity" / Int32ul,  # 16, sectors per grain
    "l1dir_offset" / Int32ul,  # 20, sectors
    "l1dir_size" / Int32ul,  # 24, entries
    "file_sectors" / Int32ul,  # 28
    "cylinders" / Int32ul,  # 32
    "heads" / Int32ul,  # 36
    "sectors_per_track" / Int32ul,  # 40
)
"""qemu's ``VMDK3Header`` after the magic (the ESX "COWD" sparse extent)."""

MARKER = Struct("val" / Int64ul, "size" / Int32ul, "type" / Int32ul)
"""The first 16 bytes of a stream marker sector (footer, end of stream)."""

SESPARSE_CONST_HEADER = Struct(
    "magic" / Int64ul,
    "version" / Int64ul,
    "capacity" / Int64ul,
    "grain_size" / Int64ul,
    "grain_table_size" / Int64ul,
    "flags" / Int64ul,
    "reserved1" / Int64ul,
    "reserved2" / Int64ul,
    "reserved3" / Int64ul,
    "reserved4" / Int64ul,
    "volatile_header_offset" / Int64ul,
    "volatile_header_size" / Int64ul,
    "journal_header_offset" / Int64ul,
    "journal_header_size" / Int64ul,
    "journal_offset" / Int64ul,
    "journal_size" / Int64ul,
    "grain_dir_offset" / Int64ul,
    "grain_dir_size" / Int64ul,
    "grain_tables_offset" / Int64ul,
    "grain_tables_size" / Int64ul,
    "free_bitmap_offset" / Int64ul,
    "free_bitmap_size" / Int64ul,
    "backmap_offset" / Int64ul,
    "backmap_size" / Int64ul,
    "grains_offset" / Int64ul,
    "grains_size" / Int64ul,
    "pad" / Bytes(304),
)
"""qemu's ``VMDKSESparseConstHeader``: one sector at the start of a seSparse extent."""

SESPARSE_VOLATILE_HEADER = Struct(
    "magic" / Int64ul,
    "free_gt_number" / Int64ul,
    "next_txn_seq_number" / Int64ul,
    "replay_journal" / Int64ul,
    "pad" / Bytes(480),
)
"""qemu's ``VMDKSESparseVolatileHeader``."""

VMDK4_OFFSETS = {
    "magic": 0,
    "version": 4,
    "flags": 8,
    "capacity": 12,
    "granularity": 20,
    "desc_offset": 28,
    "desc_size": 36,
    "num_gtes_per_gt": 44,
    "rgd_offset": 48,
    "gd_offset": 56,
    "grain_offset": 64,
    "compressAlgorithm": 77,
}
VMDK3_OFFSETS = {"granularity": 16, "l1dir_offset": 20, "l1dir_size": 24}

# -- constants -----------------------------------------------------------------

SECTOR = 512
VMDK4_HEADER_SIZE = VMDK4_HEADER.sizeof()  # 79
VMDK3_HEADER_SIZE = VMDK3_HEADER.sizeof()  # 44
SESPARSE_HEADER_SIZE = SECTOR

VMDK4_FLAG_NL_DETECT = 1 << 0
VMDK4_FLAG_RGD = 1 << 1
VMDK4_FLAG_ZERO_GRAIN = 1 << 2
VMDK4_FLAG_COMPRESS = 1 << 16
VMDK4_FLAG_MARKER = 1 << 17
VMDK4_COMPRESSION_DEFLATE = 1
GD_AT_END = (1 << 64) - 1
MARKER_END_OF_STREAM, MARKER_FOOTER = 0, 3
FOOTER_SIZE = 3 * SECTOR  # footer marker, footer header, end-of-stream marker

SESPARSE_CONST_MAGIC = 0xCAFEBABE
SESPARSE_VOLATILE_MAGIC = 0xCAFECAFE
SESPARSE_VERSION = 0x0000000200000001

#: qemu reads at most this much descriptor text (``vmdk_read_desc``).
DESC_READ_CAP = (1 << 20) - 1
#: CID, parentCID and parentFileNameHint are searched for in this many bytes.
DESC_SIZE = 20 * SECTOR
#: Where a sparse file's descriptor is read for them (qemu ignores desc_offset).
SPARSE_DESC_OFFSET = 0x200
MAX_CREATE_TYPE = 127  # qemu's char ct[128]
MAX_PARENT_HINT = 4095  # qemu's auto_backing_file[PATH_MAX]
MAX_GTES_PER_GT = 512
MAX_CLUSTER_SECTORS = 0x200000
MAX_L1_SIZE = 32 * 1024 * 1024
VMDK3_L2_SIZE = 4096
MAX_VERSION = 3
#: imgchain's limit, not qemu's: qemu opens one file per extent line and runs
#: out of file descriptors long before this (a blank line before an extent
#: line counts it twice, as ``sscanf`` reads on to the next line).
MAX_EXTENTS = 65536

#: The createType values a text descriptor may have (``vmdk_open_desc_file``).
#: monolithicSparse and streamOptimized exist only as sparse files.
DESCRIPTOR_CREATE_TYPES = (
    "monolithicFlat",
    "vmfs",
    "vmfsSparse",
    "seSparse",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
)
#: Extent types qemu opens; others (ZERO, VMFSRDM, VMFSRAW ...) are skipped.
EXTENT_TYPES = ("FLAT", "SPARSE", "VMFS", "VMFSSPARSE", "SESPARSE")
FLAT_TYPES = ("FLAT", "VMFS")
INT64_MAX = (1 << 63) - 1
INT64_MIN = -(1 << 63)
U32 = (1 << 32) - 1
U64 = (1 << 64) - 1
MAX_LENGTH = INT64_MAX & ~((1 << 30) - 1)  # qemu's BDRV_MAX_LENGTH

_WS = b" \t\n\v\f\r"  # C isspace() in the C locale


# -- records -------------------------------------------------------------------


class Vmdk4Header(NamedTuple):
    """``VMDK4Header``, fields as qemu names them (magic included)."""

    magic: bytes
    version: int
    flags: int
    capacity: int
    granularity: int
    desc_offset: int
    desc_size: int
    num_gtes_per_gt: int
    rgd_offset: int
    gd_offset: int
    grain_offset: int
    filler: bytes
    check_bytes: bytes
    compressAlgorithm: int  # qemu's name


class Vmdk3Header(NamedTuple):
    """``VMDK3Header``, fields as qemu names them (magic included)."""

    magic: bytes
    version: int
    flags: int
    disk_sectors: int
    granularity: int
    l1dir_offset: int
    l1dir_size: int
    file_sectors: int
    cylinders: int
    heads: int
    sectors_per_track: int


class SparseExtent(NamedTuple):
    """A sparse extent's header as qemu sets up the extent from it
    (``vmdk_open_vmdk4``, ``vmdk_open_vmfs_sparse``, ``vmdk_open_se_sparse``)."""

    kind: str  #: "vmdk4", "vmdk3" or "sesparse"
    header: Vmdk4Header | Vmdk3Header | tuple[int, ...]
    #: The header came from the streamOptimized footer (gd_offset was GD_AT_END).
    from_footer: bool
    sectors: int
    cluster_sectors: int
    compressed: bool
    version: int
    l1_table_offset: int
    l1_size: int
    l1_backup_table_offset: int

    @property
    def cluster_size(self) -> int:
        return self.cluster_sectors * SECTOR

    @property
    def virtual_size(self) -> int:
        return self.sectors * SECTOR


class ExtentLine(NamedTuple):
    """One line of a descriptor that qemu's extent pattern matched (four
    fields or more), whether or not qemu opens it."""

    line: int  #: 1-based line number in the descriptor
    access: str  #: RW, RDONLY, NOACCESS ... (qemu opens RW only)
    sectors: int
    type: str  #: FLAT, SPARSE, ZERO, VMFS, VMFSSPARSE, VMFSRDM, VMFSRAW, SESPARSE ...
    filename: str
    offset: int | None  #: FLAT's offset in sectors; 0 for VMFS; None where the line has none
    #: qemu opens it: access RW, a type of :data:`EXTENT_TYPES`, sectors > 0.
    used: bool


class Descriptor(NamedTuple):
    """A descriptor's text as qemu reads it."""

    #: The ``version=`` line's value (qemu's probe looks at it; its open does not).
    version: int | None
    create_type: str | None
    extents: tuple[ExtentLine, ...]
    #: ``ddb.<key> = "<value>"`` lines, in order (qemu writes them at create and
    #: reads none at open).
    ddb: tuple[tuple[str, str], ...]
    #: Bytes of text read (at most :data:`DESC_READ_CAP`, up to the first NUL).
    length: int

    def ddb_value(self, key: str) -> str | None:
        """The last value of ``ddb.<key>`` (``adapterType``, ``virtualHWVersion`` ...)."""
        found = None
        for name, value in self.ddb:
            if name == "ddb." + key:
                found = value
        return found


class Extent(NamedTuple):
    """An extent of the image, in qemu's order: what ``qemu-img info``
    lists under ``format-specific.data.extents``."""

    #: The name as the descriptor gives it (resolved by qemu against the
    #: descriptor's folder); None for the image file itself.
    filename: str | None
    #: The descriptor's type; None for a sparse file's own extent (qemu-img prints "").
    type: str | None
    #: Size in sectors: the sparse header's capacity where the header is known,
    #: else the descriptor's size.
    sectors: int
    #: FLAT/VMFS: where the data starts in the file, in sectors.
    flat_offset: int | None
    #: Grain size in sectors; None for a flat extent, and for a sparse extent
    #: in another file until its header is read (:meth:`VmdkImage.with_extent_headers`).
    cluster_sectors: int | None
    compressed: bool
    sparse: SparseExtent | None

    @property
    def flat(self) -> bool:
        return self.type in FLAT_TYPES

    @property
    def virtual_size(self) -> int:
        return self.sectors * SECTOR

    @property
    def cluster_size(self) -> int | None:
        return None if self.cluster_sectors is None else self.cluster_sectors * SECTOR

    @property
    def header_known(self) -> bool:
        """False for a sparse extent in another file whose header is not read yet."""
        return self.flat or self.sparse is not None


class VmdkImage(NamedTuple):
    """A decoded VMDK: a descriptor file or a sparse file."""

    #: The file's own sparse header (None for a descriptor file).
    sparse: SparseExtent | None
    #: The descriptor qemu took the extents from: the descriptor file, or the
    #: embedded text of a sparse header with capacity 0.  None for a sparse
    #: image, whose one extent is the file itself.
    descriptor: Descriptor | None
    #: A sparse file's embedded descriptor text, read leniently: qemu reads
    #: only CID, parentCID and parentFileNameHint from it, and ignores its
    #: extent lines (other readers may not).
    embedded: Descriptor | None
    create_type: str
    cid: int
    parent_cid: int
    parent_filename_hint: str | None
    extents: tuple[Extent, ...]

    @property
    def format(self) -> str:
        return NAME

    @property
    def virtual_size(self) -> int:
        return sum(e.sectors for e in self.extents) * SECTOR

    @property
    def info_supported(self) -> bool:
        """qemu's ``vmdk_co_get_info`` answers (so that qemu-img info prints
        ``cluster-size`` and ``dirty-flag``) only when every extent is of the
        first one's kind: flat or not, compressed or not, same grain size."""
        first = self.extents[0]
        return all(
            e.flat == first.flat
            and e.compressed == first.compressed
            and (first.flat or e.cluster_sectors == first.cluster_sectors)
            for e in self.extents[1:]
        )

    @property
    def cluster_size(self) -> int | None:
        first = self.extents[0]
        if first.flat or not self.info_supported:
            return None
        return first.cluster_size

    @property
    def backing_filename(self) -> str | None:
        return self.parent_filename_hint or None

    @property
    def backing_format(self) -> str | None:
        return NAME if self.backing_filename else None

    @property
    def dirty(self) -> bool:
        return False

    @property
    def corrupt(self) -> bool:
        return False

    @property
    def encrypted(self) -> bool:
        return False

    @property
    def data_file(self) -> None:
        return None

    @property
    def references(self) -> tuple[Reference, ...]:
        """The parent (``parentFileNameHint``, opened as vmdk), then every
        extent in another file that qemu opens, resolved against the
        descriptor's folder.  A flat extent is read as raw data ("raw"); a
        sparse one ("vmdk") must be read with :func:`decode_extent_header`,
        not :func:`decode` (qemu reads only its header)."""
        refs = []
        if self.backing_filename:
            refs.append(Reference("backing", self.backing_filename, "image", NAME))
        for e in self.extents:
            if e.filename is not None:
                refs.append(Reference("extent", e.filename, "image", "raw" if e.flat else NAME))
        return tuple(refs)

    def with_extent_headers(self, headers: Sequence[SparseExtent | None]) -> VmdkImage:
        """The record completed from the sparse headers of its extents
        (``headers[i]`` for ``extents[i]``; None where there is none to
        give, such as flat extents).  qemu takes a sparse extent's size,
        grain size and compression from its header, not from the
        descriptor, and calls an image with a compressed extent
        streamOptimized."""
        if len(headers) != len(self.extents):
            raise ValueError("one header (or None) per extent")
        extents = []
        create_type = self.create_type
        for e, h in zip(self.extents, headers, strict=True):
            if h is not None and not e.flat:
                e = e._replace(sectors=h.sectors, cluster_sectors=h.cluster_sectors, compressed=h.compressed, sparse=h)
                if h.compressed:
                    create_type = "streamOptimized"
            extents.append(e)
        return self._replace(extents=tuple(extents), create_type=create_type)


# -- probe -----------------------------------------------------------------------


_VERSION_LINES = tuple(b"version=%d%s" % (v, end) for end in (b"\n", b"\r\n") for v in (1, 2, 3))


def probe(buf: bytes, filename: str | None = None) -> int:
    """qemu's ``vmdk_probe`` on the first bytes of a file: 100 for a sparse
    magic or a text descriptor, 0 otherwise."""
    if len(buf) < 4:
        return 0
    if buf[:4] in (VMDK3_MAGIC, VMDK4_MAGIC):
        return 100
    end = len(buf)
    p = 0
    while p < end:
        c = buf[p]
        if c == 0x23:  # '#': skip the comment line
            nl = buf.find(b"\n", p)
            p = end + 1 if nl < 0 else nl + 1
            continue
        if c == 0x20:  # ' ': only a line of spaces is a blank line
            while p < end and buf[p] == 0x20:
                p += 1
            if p < end and buf[p] == 0x0D:
                p += 1
            if p == end or buf[p] != 0x0A:
                return 0
            p += 1
            continue
        return 100 if buf.startswith(_VERSION_LINES, p) else 0
    return 0


def sniff(buf: bytes) -> bool:
    """For the registry: does qemu probe ``buf`` as vmdk?"""
    return probe(buf) > 0


# -- helpers ---------------------------------------------------------------------


def _bad(reason: str, field: str | None = None, offset: int | None = None, value: object = None) -> FormatError:
    return FormatError(NAME, reason, field=field, offset=offset, value=value)


def _unsupported(reason: str, field: str | None = None, offset: int | None = None) -> UnsupportedFeatureError:
    return UnsupportedFeatureError(NAME, reason, field=field, offset=offset)


def _read_padded(win: Window, offset: int, length: int, field: str) -> bytes:
    """``length`` bytes at ``offset`` as qemu reads them: what lies past the
    end of the file reads as zeros."""
    if offset >= win.size or length <= 0:
        return bytes(max(length, 0))
    have = min(length, win.size - offset)
    data = win.get(offset, have, NAME, field, offset, ahead=have)
    return data + bytes(length - have)


def _c_text(raw: bytes) -> bytes:
    """The C string in ``raw``: up to its first NUL."""
    nul = raw.find(b"\0")
    return raw if nul < 0 else raw[:nul]


def _c_text_at(win: Window, offset: int, length: int, field: str) -> bytes:
    """``_c_text(_read_padded(win, offset, length, field))``, read only as far
    as its NUL (see :func:`_read_pieces`)."""
    end = min(offset + length, win.size)
    stop = min(end, max(SECTOR, 1 << offset.bit_length()))
    if offset < stop:  # the usual case: the string ends in the first piece
        data = win.get(offset, stop - offset, NAME, field, offset, ahead=end - offset)
        nul = data.find(b"\0")
        if nul >= 0:
            return data[:nul]
        if stop == end:
            return data
    return _read_pieces(win, offset, length, field, to_nul=True)


def _read_pieces(win: Window, offset: int, length: int, field: str, to_nul: bool = False) -> bytes:
    """The ``length`` bytes at ``offset`` that the file holds (or, with
    ``to_nul``, those before the first NUL), in pieces that end at powers
    of two (512, 1024 ...): a window's first read serves the pieces it
    holds whole, the rest of the range is asked for in one read from the
    first piece it lacks, and pieces of a later range fall in the same reads."""
    end = min(offset + length, win.size)
    pos = offset
    parts = []
    while pos < end:
        stop = min(end, max(SECTOR, 1 << pos.bit_length()))
        data = win.get(pos, stop - pos, NAME, field, offset, ahead=end - pos)
        if to_nul and (nul := data.find(b"\0")) >= 0:
            parts.append(data[:nul])
            break
        parts.append(data)
        pos = stop
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _readable(offset: int, length: int) -> bool:
    """Whether qemu's block layer accepts this read (``bdrv_check_request``)."""
    return 0 <= offset <= MAX_LENGTH and length <= MAX_LENGTH - offset


def _signed64(value: int) -> int:
    value &= U64
    return value - (1 << 64) if value > INT64_MAX else value


# -- the extent line pattern ------------------------------------------------------


class _Scan:
    """C ``sscanf`` over a C string, for qemu's one extent-line pattern."""

    __slots__ = ("pos", "text")

    def __init__(self, text: bytes, pos: int) -> None:
        self.text = text
        self.pos = pos

    def skip_ws(self) -> None:
        m = _NON_WS.search(self.text, self.pos)
        self.pos = len(self.text) if m is None else m.start()

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def word(self, width: int) -> bytes | None:
        """``%<width>s``: None on input failure."""
        self.skip_ws()
        text, start, n = self.text, self.pos, len(self.text)
        p = start
        while p < n and p - start < width and text[p] not in _WS:
            p += 1
        if p == start:
            return None
        self.pos = p
        return text[start:p]

    def integer(self) -> int | None:
        """``%ld`` (glibc): decimal, optional sign, clamped to int64."""
        self.skip_ws()
        text, p, n = self.text, self.pos, len(self.text)
        negative = False
        if p < n and text[p] in b"+-":
            negative = text[p] == 0x2D
            p += 1
        start = p
        while p < n and 0x30 <= text[p] <= 0x39:
            p += 1
        if p == start:
            return None
        self.pos = p
        digits = text[start:p].lstrip(b"0") or b"0"
        if len(digits) > 19:  # past int64 whatever the digits; avoids huge int conversions
            return INT64_MIN if negative else INT64_MAX
        value = -int(digits) if negative else int(digits)
        return max(INT64_MIN, min(INT64_MAX, value))

    def literal(self, char: int) -> bool:
        if self.pos < len(self.text) and self.text[self.pos] == char:
            self.pos += 1
            return True
        return False

    def name(self, width: int) -> bytes | None:
        """``%<width>[^\\n\\r"]``."""
        text, start, n = self.text, self.pos, len(self.text)
        p = start
        while p < n and p - start < width and text[p] not in b'\n\r"':
            p += 1
        if p == start:
            return None
        self.pos = p
        return text[start:p]


class ScannedLine(NamedTuple):
    """What qemu's ``sscanf(p, "%10s %ld %10s \\"%511[^\\n\\r\\"]\\" %ld", ...)`` gives."""

    matches: int  #: conversions made; -1 for EOF before the first
    access: bytes
    sectors: int
    type: bytes
    filename: bytes
    offset: int | None


def scan_extent_line(text: bytes, pos: int) -> ScannedLine:
    """qemu's extent-line ``sscanf`` at ``pos`` of the C string ``text``
    (which must hold no NUL).  Like ``sscanf`` it reads on past the end of
    the line where whitespace lets it."""
    s = _Scan(text, pos)
    access = s.word(10)
    if access is None:
        return ScannedLine(-1, b"", 0, b"", b"", None)
    sectors = s.integer()
    if sectors is None:
        return ScannedLine(1, access, 0, b"", b"", None)
    kind = s.word(10)
    if kind is None:
        return ScannedLine(2, access, sectors, b"", b"", None)
    s.skip_ws()
    if not s.literal(0x22):
        return ScannedLine(3, access, sectors, kind, b"", None)
    fname = s.name(511)
    if fname is None:
        return ScannedLine(3, access, sectors, kind, b"", None)
    if not s.literal(0x22):
        return ScannedLine(4, access, sectors, kind, fname, None)
    offset = s.integer()
    return ScannedLine(4 if offset is None else 5, access, sectors, kind, fname, offset)


# -- descriptor text -------------------------------------------------------------

# The descriptor is read line by line as qemu reads it, but by a few searches
# in C over the whole text rather than by a loop over its lines in Python:
# each pattern below starts with the "\n" before a line, and is searched for
# in the text with a "\n" put before it (so that the first line has one too).
_VERSION_LINE = re.compile(rb"\n[ \t]*version[ \t]*=[ \t]*(\d{1,9})[ \t]*\r?(?![^\n])")
#: On the text decoded (``surrogateescape``) as a whole: every byte the
#: pattern stops at is ASCII, which UTF-8 never puts inside a character, so
#: each group is the decoded bytes the same pattern in bytes would give.
#: (``\s`` as in bytes, written out: in str it would match more.)
_DDB_LINE = re.compile(r'\n[ \t]*(ddb\.[^ \t\n\r\f\v="]+)[ \t]*=[ \t]*"([^"\r\n]*)"')
#: qemu's extent-line ``sscanf`` (:func:`scan_extent_line`) from a line's
#: first byte that is not blank, where it makes four conversions or five:
#: groups access, sectors, type, filename and offset (None for four).  Each
#: conversion matches possessively, as ``sscanf`` never gives back what one
#: read: ``X{m,n}+`` where ``re`` has it (3.11 on), else ``(?=(X))\N``.
_EXTENT_LINE_PORTABLE = re.compile(
    rb"\n[ \t\v\f\r]*"
    rb"(?=([^ \t\n\v\f\r]{1,10}))\1"  # %10s
    rb"[ \t\n\v\f\r]*(?=([+-]?[0-9]+))\2"  # %ld
    rb"[ \t\n\v\f\r]*(?=([^ \t\n\v\f\r]{1,10}))\3"  # %10s
    rb'[ \t\n\v\f\r]*"(?=([^\n\r"]{1,511}))\4'  # "%511[^\n\r"]
    rb'(?:"(?:[ \t\n\v\f\r]*([+-]?[0-9]+))?)?'  # " %ld
)
_EXTENT_LINE_POSSESSIVE = (
    rb"\n[ \t\v\f\r]*+"
    rb"([^ \t\n\v\f\r]{1,10}+)"  # %10s
    rb"[ \t\n\v\f\r]*+([+-]?+[0-9]++)"  # %ld
    rb"[ \t\n\v\f\r]*+([^ \t\n\v\f\r]{1,10}+)"  # %10s
    rb'[ \t\n\v\f\r]*+"([^\n\r"]{1,511}+)'  # "%511[^\n\r"]
    rb'(?:"(?:[ \t\n\v\f\r]*+([+-]?+[0-9]++))?)?'  # " %ld
)
_EXTENT_LINE = re.compile(_EXTENT_LINE_POSSESSIVE) if sys.version_info >= (3, 11) else _EXTENT_LINE_PORTABLE

_EXTENT_TYPES = tuple(t.encode() for t in EXTENT_TYPES)
_CR = b"\r"
_NON_WS = re.compile(rb"[^ \t\n\v\f\r]")
_HINT = b"parentFileNameHint"
#: win.memo key of the extent lines of a strictly parsed descriptor (by offset).
_LINES_MEMO = "vmdk extent lines"


def _line_number(text: bytes, pos: int) -> int:
    return text.count(b"\n", 0, pos) + 1


def _line(text: bytes, start: int) -> bytes:
    end = text.find(b"\n", start)
    return text[start:] if end < 0 else text[start:end]


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _long(field: bytes) -> int:
    """``%ld`` (glibc) of ``[+-]?[0-9]+``: clamped to int64."""
    if len(field) < 19:  # (18 digits at most: inside int64)
        return int(field)
    if len(field) > 20:  # past int64 whatever the digits, unless zeros lead: avoids huge int conversions
        negative = field[0] == 0x2D
        digits = field.lstrip(b"+-").lstrip(b"0") or b"0"
        if len(digits) > 19:
            return INT64_MIN if negative else INT64_MAX
        value = -int(digits) if negative else int(digits)
    else:
        value = int(field)
    return max(INT64_MIN, min(INT64_MAX, value))


def parse_descriptor(
    raw: bytes, *, strict: bool = True, offset: int = 0, sink: list[ExtentLine] | None = None
) -> Descriptor:
    """Parse descriptor text as qemu's ``vmdk_open_desc_file`` does.

    ``raw`` is what qemu reads (at most :data:`DESC_READ_CAP` bytes; the text
    ends at the first NUL).  ``strict``: raise :class:`FormatError` where
    qemu refuses (no ``createType``, a malformed extent line, naming the
    line) and :class:`UnsupportedFeatureError` for a createType qemu does
    not open; otherwise keep what can be read.  ``offset`` is where the text
    lies in its file, for messages.  ``sink``: a list that receives each
    extent line as it is read, so that a caller sees the lines before the
    one that refused the text (qemu opens those extents before it fails).
    """
    return _parse_text(_c_text(raw[:DESC_READ_CAP]), strict, offset, sink)


def _parse_text(text: bytes, strict: bool, offset: int, sink: list[ExtentLine] | None) -> Descriptor:
    """:func:`parse_descriptor` of the C string ``text`` (no NUL, at most
    :data:`DESC_READ_CAP` bytes)."""
    create_type = _create_type(text, strict, offset)
    extents: list[ExtentLine] = [] if sink is None else sink
    lined = b"\n" + text
    _extent_lines(text, lined, strict, offset, extents)
    m = _VERSION_LINE.search(lined)
    ddb = tuple(_DDB_LINE.findall(_text(lined))) if b"ddb." in text else ()
    return Descriptor(None if m is None else int(m[1]), create_type, tuple(extents), ddb, len(text))


def _extent_lines(text: bytes, lined: bytes, strict: bool, offset: int, extents: list[ExtentLine]) -> None:
    """qemu's ``vmdk_parse_extents``: ``sscanf`` at the start of every line,
    and its checks of what that gives (``lined`` is ``text`` after a "\\n").

    ``sscanf`` skips blank space first, line ends included: every line of a
    run of blank lines reads the extent line after the run, as that line
    does (qemu opens it once per line).  Each run is looked at once, so that
    no input makes this quadratic."""
    search = _EXTENT_LINE.search
    counted = newlines = 0  # newlines in text[:counted]
    previous = None  # the match before: no blank run reaches back past its first byte
    m = search(lined)
    while m is not None:
        start = m.start()  # the line's start in text (its "\n" in lined)
        if start > 1 and text[start - 2] not in _WS:
            starts: list[int] | tuple[int] = (start,)
        else:  # blank space before the line: every line start in it reads this line too
            low = 0 if previous is None else previous.start(1)  # (in text: just past that byte)
            run = low + len(text[low:start].rstrip(_WS))
            starts = [0] if run == 0 else []
            nl = text.find(b"\n", run, start)
            while nl >= 0:
                starts.append(nl + 1)
                nl = text.find(b"\n", nl + 1, start)
        newlines += text.count(b"\n", counted, starts[0])
        counted = starts[0]
        access, sectors_field, kind, name, offset_field = m.groups()
        sectors = int(sectors_field) if len(sectors_field) < 19 else _long(sectors_field)  # (_long's first case)
        scanned_offset = flat_offset = None if offset_field is None else _long(offset_field)
        used = False
        if access != b"RW":
            ok = True
        else:
            if kind == b"FLAT":
                ok = scanned_offset is not None and scanned_offset >= 0
            elif kind == b"VMFS":
                ok, flat_offset = scanned_offset is None, 0
            else:
                ok = scanned_offset is None
            used = sectors > 0 and kind in _EXTENT_TYPES
        if not ok:
            if strict:
                raise _bad(
                    f"line {newlines + 1}: invalid extent line {_text(_line(text, starts[0]).rstrip(_CR))!r}",
                    "extent line",
                    offset + starts[0],
                )
        else:
            access_text, kind_text, name_text = _text(access), _text(kind), _text(name)
            number = newlines
            for line_start in starts:
                number += 1
                if len(extents) == MAX_EXTENTS:
                    raise _bad(
                        f"line {number}: more than {MAX_EXTENTS} extent lines", "extent line", offset + line_start
                    )
                extents.append(ExtentLine(number, access_text, sectors, kind_text, name_text, flat_offset, used))
        previous = m
        m = search(lined, start + 1)


def _create_type(text: bytes, strict: bool, offset: int) -> str | None:
    """qemu's ``vmdk_parse_description(desc, "createType", ct, 128)``, then
    its check of the value."""
    at = text.find(b"createType")
    value = None
    if at >= 0:
        start = at + len(b"createType") + 2  # skips '="' whatever they are
        close = text.find(b'"', start) if start < len(text) else -1
        if close >= 0 and close - start <= MAX_CREATE_TYPE:
            value = _text(text[start:close])
    if not strict:
        return value
    if value is None:
        where = f" (line {_line_number(text, at)})" if at >= 0 else ""
        raise _bad(
            f'invalid descriptor: no createType="..." of at most {MAX_CREATE_TYPE} bytes{where}',
            "createType",
            offset + at if at >= 0 else offset,
        )
    if value not in DESCRIPTOR_CREATE_TYPES:
        raise _unsupported(
            f"createType {value!r} unsupported (a descriptor may be {', '.join(DESCRIPTOR_CREATE_TYPES)})",
            "createType",
            offset + at,
        )
    return value


# -- CID, parentCID, parentFileNameHint ----------------------------------------

#: ``sscanf("%x")``: blank space, a sign, "0x" where a digit follows it, the digits.
_HEX_VALUE = rb"[ \t\n\v\f\r]*([+-]?)(?:0[xX](?=[0-9a-fA-F]))?([0-9a-fA-F]*)"
_HEX = re.compile(_HEX_VALUE)
#: ``vmdk_read_cid`` in a C string that does not end with the key: its first
#: occurrence, the byte after it, then the value.
_CID_IN_TEXT = re.compile(rb"CID[\s\S]" + _HEX_VALUE)
_PARENT_CID_IN_TEXT = re.compile(rb"parentCID[\s\S]" + _HEX_VALUE)


def _area_fields(win: Window, at: int, known: bytes | None = None) -> tuple[str | None, int | None, int | None]:
    """qemu's ``vmdk_parent_open`` (parentFileNameHint), then ``vmdk_read_cid``
    (CID, parentCID), on the :data:`DESC_SIZE` bytes at ``at`` (zeros past the
    end of the file).  Each looks in the C string there, and only a key at
    its very end makes them look past its NUL: otherwise the C string is all
    that is read.  ``known``: that C string, where it is read already."""
    text = _c_text_at(win, at, DESC_SIZE, "descriptor") if known is None else known
    n = len(text)
    if n < DESC_SIZE - 1 and not text.endswith((b"CID", _HINT)) and not text.endswith(_HINT, 0, n - 1):
        hint = _parent_hint(text, n, at)
        return hint, _strtoul32(_CID_IN_TEXT.search(text)), _strtoul32(_PARENT_CID_IN_TEXT.search(text))
    area = _read_pieces(win, at, DESC_SIZE, "descriptor")
    area += bytes(DESC_SIZE - len(area))  # zeros past the end of the file
    nul = area.find(b"\0")
    end = DESC_SIZE if nul < 0 else nul
    return _parent_hint(area, end, at), _find_cid(area, end, b"CID"), _find_cid(area, end, b"parentCID")


def _find_cid(area: bytes, end: int, key: bytes) -> int | None:
    """qemu's ``vmdk_read_cid``: ``strstr`` for ``key`` in the C string of
    ``area``'s first DESC_SIZE - 1 bytes (``end``: where the C string of all
    of them ends), skip it and one more byte, then ``sscanf("%x")`` (glibc
    ``strtoul``, base 16); None where qemu fails."""
    limit = DESC_SIZE - 1
    if end > limit:
        end = limit
    at = area.find(key, 0, end)
    if at < 0:
        return None
    # sscanf starts one byte past the key, even past the string's end.
    pos = at + len(key) + 1
    if pos > end:
        nul = area.find(b"\0", pos, limit)
        end = limit if nul < 0 else nul
    return _strtoul32(_HEX.match(area, pos, end))  # (None: pos is past the limit, nothing to read)


def _strtoul32(m: re.Match[bytes] | None) -> int | None:
    """What ``sscanf("%x")`` into qemu's uint32_t gives for a match of
    :data:`_HEX_VALUE` (glibc ``strtoul``, base 16); None for no match or no digit."""
    if m is None:
        return None
    sign, digits = m.group(1, 2)
    if len(digits) > 16:
        digits = digits.lstrip(b"0")
        if len(digits) > 16:
            return U32 if sign != b"-" else 1  # strtoul clamps to ULONG_MAX, then - and the cast to uint32_t
    elif not digits:
        return None
    value = int(digits or b"0", 16)
    if sign == b"-":
        value = -value & U64
    return value & U32


def _parent_hint(area: bytes, end: int, offset: int) -> str | None:
    """qemu's ``vmdk_parent_open``: the text after ``parentFileNameHint="``
    up to the next ``"``, in the C string of ``area``'s first DESC_SIZE
    bytes (it ends at ``end``; qemu's buffer has NULs past DESC_SIZE)."""
    at = area.find(_HINT, 0, end)
    if at < 0:
        return None
    start = at + len(_HINT) + 2
    stop = end
    if start > end:  # the value starts past the string's NUL: it ends at the next one
        nul = area.find(b"\0", start, DESC_SIZE)
        stop = DESC_SIZE if nul < 0 else nul
    close = area.find(b'"', start, stop)
    if close < 0:
        raise _bad("parentFileNameHint without a closing '\"'", "parentFileNameHint", offset + at)
    if close - start > MAX_PARENT_HINT:
        raise _bad(
            f"parentFileNameHint of {close - start} bytes (at most {MAX_PARENT_HINT})",
            "parentFileNameHint",
            offset + at,
        )
    return c_string(area[start:close])


# -- sparse headers ----------------------------------------------------------------


def _vmdk4_header(win: Window, base: int = 0) -> Vmdk4Header:
    raw = win.get(base, VMDK4_HEADER_SIZE, NAME, "header", base)
    return Vmdk4Header._make(unpack(VMDK4_HEADER, raw, NAME, "header", base))


def _footer_header(win: Window) -> Vmdk4Header:
    """The streamOptimized footer: qemu reads 1536 bytes ending at the file's
    size rounded up to a sector, and checks both markers."""
    sectors = -(-win.size // SECTOR)
    at = sectors * SECTOR - FOOTER_SIZE
    if at < 0:
        raise TruncatedError(
            NAME,
            f"gd_offset says the header is in a footer, but the file has only {win.size} bytes",
            field="gd_offset",
            offset=VMDK4_OFFSETS["gd_offset"],
        )
    footer = _read_padded(win, at, FOOTER_SIZE, "footer")
    _, f_size, f_type = unpack(MARKER, footer[:16], NAME, "footer marker", at)
    e_val, e_size, e_type = unpack(MARKER, footer[1024:1040], NAME, "end-of-stream marker", at + 1024)
    header = Vmdk4Header._make(unpack(VMDK4_HEADER, footer[512 : 512 + VMDK4_HEADER_SIZE], NAME, "footer", at + 512))
    if (
        header.magic != VMDK4_MAGIC
        or (f_size, f_type) != (0, MARKER_FOOTER)
        or (e_val, e_size, e_type) != (0, 0, MARKER_END_OF_STREAM)
    ):
        raise _bad("invalid footer (gd_offset says the header is at the end of the file)", "footer", at)
    return header


def _check_l1(offset: int, size: int, entry: int, what: str, field: str, field_offset: int) -> None:
    if not _readable(_signed64(offset), size * entry):
        raise _bad(f"{what} at {offset:#x} is beyond what qemu can read", field, field_offset, offset)


def _vmdk4_extent(win: Window, h: Vmdk4Header, from_footer: bool) -> SparseExtent:
    """``vmdk_open_vmdk4`` after the header is chosen."""
    total = sectors_end(win)
    where = 512 + (total - FOOTER_SIZE) if from_footer else 0

    def at(field: str) -> int:
        return where + VMDK4_OFFSETS[field]

    compressed = h.compressAlgorithm == VMDK4_COMPRESSION_DEFLATE
    if h.version > MAX_VERSION:
        raise _unsupported(f"version {h.version} unsupported (at most {MAX_VERSION})", "version", at("version"))
    if h.num_gtes_per_gt > MAX_GTES_PER_GT:
        raise _bad(
            f"num_gtes_per_gt {h.num_gtes_per_gt} above {MAX_GTES_PER_GT} (L2 table size too big)",
            "num_gtes_per_gt",
            at("num_gtes_per_gt"),
            h.num_gtes_per_gt,
        )
    l1_entry_sectors = (h.num_gtes_per_gt * h.granularity) & U32
    if l1_entry_sectors == 0:
        raise _bad(
            f"num_gtes_per_gt {h.num_gtes_per_gt} x granularity {h.granularity} gives an invalid L1 entry size",
            "granularity",
            at("granularity"),
            h.granularity,
        )
    l1_size = (((h.capacity + l1_entry_sectors - 1) & U64) // l1_entry_sectors) & U32
    l1_backup = (h.rgd_offset << 9) & U64 if h.flags & VMDK4_FLAG_RGD else 0
    if total // SECTOR < h.grain_offset:
        raise TruncatedError(
            NAME,
            f"file truncated: grain_offset {h.grain_offset} needs at least {h.grain_offset * SECTOR} bytes, "
            f"the file has {win.size}",
            field="grain_offset",
            offset=at("grain_offset"),
        )
    if h.granularity > MAX_CLUSTER_SECTORS:
        raise _bad(
            f"granularity {h.granularity} sectors above {MAX_CLUSTER_SECTORS}",
            "granularity",
            at("granularity"),
            h.granularity,
        )
    if l1_size > MAX_L1_SIZE:
        raise _bad(f"L1 table of {l1_size} entries above {MAX_L1_SIZE}", "capacity", at("capacity"), h.capacity)
    gd = (h.gd_offset << 9) & U64
    _check_l1(gd, l1_size, 4, "grain directory", "gd_offset", at("gd_offset"))
    if l1_backup:
        _check_l1(l1_backup, l1_size, 4, "redundant grain directory", "rgd_offset", at("rgd_offset"))
    return SparseExtent(
        "vmdk4",
        h,
        from_footer,
        _signed64(h.capacity),
        h.granularity,
        compressed,
        h.version,
        _signed64(gd),
        l1_size,
        l1_backup,
    )


def sectors_end(win: Window) -> int:
    """The file's size rounded up to whole sectors, as qemu's total_sectors."""
    return -(-win.size // SECTOR) * SECTOR


def _vmdk3_extent(win: Window) -> SparseExtent:
    raw = win.get(0, VMDK3_HEADER_SIZE, NAME, "header", 0)
    h = Vmdk3Header._make(unpack(VMDK3_HEADER, raw, NAME, "header", 0))
    if h.granularity > MAX_CLUSTER_SECTORS:
        raise _bad(
            f"granularity {h.granularity} sectors above {MAX_CLUSTER_SECTORS}",
            "granularity",
            VMDK3_OFFSETS["granularity"],
            h.granularity,
        )
    if h.l1dir_size > MAX_L1_SIZE:
        raise _bad(
            f"l1dir_size {h.l1dir_size} above {MAX_L1_SIZE}", "l1dir_size", VMDK3_OFFSETS["l1dir_size"], h.l1dir_size
        )
    return SparseExtent(
        "vmdk3", h, False, h.disk_sectors, h.granularity, False, h.version, h.l1dir_offset << 9, h.l1dir_size, 0
    )


def _sesparse_extent(win: Window) -> SparseExtent:
    """``vmdk_open_se_sparse``: the const and volatile headers, strictly checked."""
    raw = win.get(0, SESPARSE_HEADER_SIZE, NAME, "seSparse const header", 0)
    c = unpack(SESPARSE_CONST_HEADER, raw, NAME, "seSparse const header", 0)
    names = [sub.name for sub in SESPARSE_CONST_HEADER.subcons]
    f = dict(zip(names, c, strict=True))
    checks = (
        (f["magic"] != SESPARSE_CONST_MAGIC, f"bad const header magic {f['magic']:#018x}"),
        (f["version"] != SESPARSE_VERSION, f"unsupported version {f['version']:#018x}"),
        (f["grain_size"] != 8, f"unsupported grain size {f['grain_size']}"),
        (f["grain_table_size"] != 64, f"unsupported grain table size {f['grain_table_size']}"),
        (f["flags"] != 0, f"unsupported flags {f['flags']:#x}"),
        (any(f[f"reserved{i}"] for i in range(1, 5)), "reserved fields not zero"),
        (any(f["pad"]), "const header padding not zero"),
    )
    for failed, why in checks:
        if failed:
            raise _unsupported(f"seSparse: {why}", "seSparse const header", 0)
    vat = (f["volatile_header_offset"] * SECTOR) & U64
    if not _readable(_signed64(vat), SECTOR):
        raise _bad("seSparse volatile header beyond what qemu can read", "volatile_header_offset", 80)
    vol = unpack(SESPARSE_VOLATILE_HEADER, _read_padded(win, vat, SECTOR, "seSparse volatile header"), NAME, "", vat)
    if vol[0] != SESPARSE_VOLATILE_MAGIC:
        raise _bad(f"seSparse: bad volatile header magic {vol[0]:#018x}", "seSparse volatile header", vat)
    if vol[3]:
        raise _unsupported("seSparse: dirty image, journal replay not supported", "replay_journal", vat + 24)
    if any(vol[4]):
        raise _unsupported("seSparse: volatile header padding not zero", "seSparse volatile header", vat)
    l1_size = (f["grain_dir_size"] * SECTOR // 8) & U32
    if f["grain_size"] > MAX_CLUSTER_SECTORS or l1_size > MAX_L1_SIZE:
        raise _bad("seSparse: L1 size too big", "grain_dir_size", 8 * 17)
    gd = (f["grain_dir_offset"] * SECTOR) & U64
    _check_l1(gd, l1_size, 8, "grain directory", "grain_dir_offset", 8 * 16)
    return SparseExtent(
        "sesparse", tuple(c[:-1]), False, _signed64(f["capacity"]), f["grain_size"], False, 0, _signed64(gd), l1_size, 0
    )


def decode_extent_header(data: bytes | Window, extent_type: str = "SPARSE") -> SparseExtent:
    """The header of a sparse extent file named by a descriptor, read as
    qemu reads it (``vmdk_open_sparse``, or ``vmdk_open_se_sparse`` for type
    SESPARSE).  Its embedded descriptor, if any, is not read: qemu reads
    only the top file's.  An extent whose header is itself a descriptor
    (capacity 0 with a desc_offset) qemu would open recursively; imgchain
    refuses it."""
    win = as_window(data)
    if extent_type == "SESPARSE":
        return _sesparse_extent(win)
    if win.size < 4:
        raise TruncatedError(NAME, f"extent file of {win.size} bytes is too small", field="magic", offset=0)
    magic = win.get(0, 4, NAME, "magic", 0)
    if magic == VMDK3_MAGIC:
        return _vmdk3_extent(win)
    if magic != VMDK4_MAGIC:
        raise _bad(f"extent not in VMDK format (magic {magic!r})", "magic", 0, magic)
    h = _vmdk4_header(win)
    if h.capacity == 0 and h.desc_offset:
        raise _unsupported(
            "sparse extent whose header is a descriptor (capacity 0, desc_offset set): nested descriptors are refused",
            "capacity",
            VMDK4_OFFSETS["capacity"],
        )
    return _sparse_from_header(win, h)


def _sparse_from_header(win: Window, h: Vmdk4Header) -> SparseExtent:
    if h.gd_offset == GD_AT_END:
        return _vmdk4_extent(win, _footer_header(win), True)
    return _vmdk4_extent(win, h, False)


# -- decode ------------------------------------------------------------------------


def files_opened(data: bytes | Window) -> tuple[Reference, ...]:
    """The files qemu 7.2 opens when it opens this file as vmdk, even where
    it then refuses the image: it opens each extent as it reads its line,
    before it checks the lines after it, the CID and the parent hint.  (The
    parent is opened only once the image has opened.)  For an image that
    :func:`decode` accepts, its :attr:`~VmdkImage.references`."""
    win = as_window(data)
    try:
        return decode(win).references
    except FormatError:
        pass
    if win.size < 4:
        return ()
    magic = win.get(0, 4, NAME, "magic", 0)
    if magic == VMDK3_MAGIC:
        return ()
    if magic == VMDK4_MAGIC:
        if win.size < VMDK4_HEADER_SIZE:
            return ()
        h = _vmdk4_header(win)
        if not (h.capacity == 0 and h.desc_offset):
            return ()
        at = (h.desc_offset << 9) & U64
    else:
        at = 0
    lines: Sequence[ExtentLine] | None = win.memo.get((_LINES_MEMO, at))  # decode's, where it read them
    if lines is None:
        lines = []
        with contextlib.suppress(FormatError):
            _parse_text(_c_text_at(win, at, min(win.size, DESC_READ_CAP), "descriptor"), True, at, lines)
    return tuple(
        Reference("extent", e.filename, "image", "raw" if e.type in FLAT_TYPES else NAME) for e in lines if e.used
    )


def decode(data: bytes | Window) -> VmdkImage:
    """Decode a VMDK image as qemu 7.2's ``vmdk_open`` opens it: a sparse
    file (VMDK4 or VMDK3) or a descriptor file.  ``data`` is the whole file,
    or a :class:`Window` on it."""
    win = as_window(data)
    if win.size < 4:
        raise TruncatedError(NAME, f"file of {win.size} bytes is too small to be an image", field="magic", offset=0)
    magic = win.get(0, 4, NAME, "magic", 0)
    descriptor = embedded = sparse = None
    text_at = 0
    known: bytes | None = None  # the C string at desc_at, where it is read already
    if magic in (VMDK3_MAGIC, VMDK4_MAGIC):
        desc_at = SPARSE_DESC_OFFSET
        if magic == VMDK3_MAGIC:
            sparse = _vmdk3_extent(win)
            create_type = ""  # qemu sets none for a VMDK3 file
        else:
            h = _vmdk4_header(win)
            if h.capacity == 0 and h.desc_offset:
                text_at = (h.desc_offset << 9) & U64
                if not _readable(_signed64(text_at), min(win.size, DESC_READ_CAP)):
                    raise _bad(f"desc_offset {h.desc_offset} beyond what qemu can read", "desc_offset", 28)
                descriptor, known = _descriptor(win, text_at, desc_at)
            else:
                sparse = _sparse_from_header(win, h)
                embedded, known = _embedded(win, h, desc_at)
        if sparse is not None:
            create_type = (
                "streamOptimized" if sparse.compressed else ("monolithicSparse" if magic == VMDK4_MAGIC else "")
            )
    else:
        desc_at = 0
        descriptor, known = _descriptor(win, 0, desc_at)
    try:
        if descriptor is not None:
            assert descriptor.create_type is not None  # strict parsing ensures it
            create_type = descriptor.create_type
            extents = tuple(
                [
                    Extent(e.filename, e.type, e.sectors, e.offset, None, False, None)
                    for e in descriptor.extents
                    if e.used
                ]
            )
            if not extents:
                raise _bad(
                    "descriptor names no extent qemu would open (qemu-img info aborts on it)", "extent line", desc_at
                )
        else:
            assert sparse is not None
            extents = (Extent(None, None, sparse.sectors, None, sparse.cluster_sectors, sparse.compressed, sparse),)

        hint, cid, parent_cid = _area_fields(win, desc_at, known)
        if cid is None:
            raise _bad("descriptor has no CID (qemu reads it at open)", "CID", desc_at)
        if parent_cid is None:
            raise _bad("descriptor has no parentCID (qemu reads it at open)", "parentCID", desc_at)
    except FormatError:
        if descriptor is not None:  # for files_opened: the extents were read, qemu opened them
            win.memo[(_LINES_MEMO, text_at)] = descriptor.extents
        raise
    return VmdkImage(sparse, descriptor, embedded, create_type, cid, parent_cid, hint, extents)


def _embedded(win: Window, h: Vmdk4Header, desc_at: int) -> tuple[Descriptor | None, bytes | None]:
    """A sparse file's own descriptor text (``desc_offset``/``desc_size``),
    leniently: qemu does not parse it, but it is there for other readers.
    With the text, if it is the whole C string at ``desc_at``."""
    if not h.desc_offset or not h.desc_size:
        return None, None
    at = (h.desc_offset << 9) & U64
    length = min((h.desc_size << 9) & U64, DESC_READ_CAP)
    if at >= win.size:
        return None, None
    length = min(length, win.size - at)
    text = _c_text_at(win, at, length, "descriptor")
    return _parse_text(text, False, at, None), _whole(win, at, length, text, desc_at)


def _descriptor(win: Window, at: int, desc_at: int) -> tuple[Descriptor, bytes | None]:
    """The descriptor text at ``at``, parsed strictly; with the text, if it
    is the whole C string at ``desc_at``.  Where the text is refused, the
    extent lines before the line that refused it are kept in ``win.memo``
    for :func:`files_opened` (qemu opened them)."""
    length = min(win.size, DESC_READ_CAP)
    text = _c_text_at(win, at, length, "descriptor")
    lines: list[ExtentLine] = []
    try:
        descriptor = _parse_text(text, True, at, lines)
    except FormatError:
        win.memo[(_LINES_MEMO, at)] = lines
        raise
    return descriptor, _whole(win, at, length, text, desc_at)


def _whole(win: Window, at: int, length: int, text: bytes, desc_at: int) -> bytes | None:
    """``text`` (the C string read from ``length`` bytes at ``at``) if it is
    the whole C string at ``desc_at``: it ends at its NUL or at the file's end."""
    return text if at == desc_at and (len(text) < length or at + length >= win.size) else None
