"""qcow2, versions 2 and 3: the header, its extensions, the snapshot table
and the bitmap directory.

Field names and rules follow qemu's ``docs/interop/qcow2.txt`` ("Header",
"Header extensions", "Feature name table", "Bitmaps extension", "Full disk
encryption header pointer", "External data file name", "Snapshots",
"Bitmap directory").  Every rule that makes qemu 7.2 refuse to open an image
read-only (``qcow2_do_open``, ``qcow2_read_extensions``) is checked here and
raises :class:`FormatError` or :class:`UnsupportedFeatureError` naming the
field and its byte offset.

Pure: bytes in, immutable records (NamedTuples) out; see ``formats._base``
for the window protocol.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from construct import Bytes, Int8ub, Int16ub, Int32ub, Int64ub, Struct

from imgchain.errors import FormatError, UnsupportedFeatureError

from ._base import Reference, Window, as_window, c_string, flat, make_record, parse, unpack

NAME = "qcow2"
MAGIC = b"QFI\xfb"

# -- layouts (qcow2.txt, "Header") ------------------------------------------

QCOW2_HEADER = Struct(
    "magic" / Int32ub,  # 0
    "version" / Int32ub,  # 4
    "backing_file_offset" / Int64ub,  # 8
    "backing_file_size" / Int32ub,  # 16
    "cluster_bits" / Int32ub,  # 20
    "size" / Int64ub,  # 24
    "crypt_method" / Int32ub,  # 32
    "l1_size" / Int32ub,  # 36
    "l1_table_offset" / Int64ub,  # 40
    "refcount_table_offset" / Int64ub,  # 48
    "refcount_table_clusters" / Int32ub,  # 56
    "nb_snapshots" / Int32ub,  # 60
    "snapshots_offset" / Int64ub,  # 64
)
"""Bytes 0..71, common to versions 2 and 3."""

QCOW2_HEADER_V3 = Struct(
    "incompatible_features" / Int64ub,  # 72
    "compatible_features" / Int64ub,  # 80
    "autoclear_features" / Int64ub,  # 88
    "refcount_order" / Int32ub,  # 96
    "header_length" / Int32ub,  # 100
)
"""Bytes 72..103, version 3 only."""

QCOW2_HEADER_FIXED_V3 = Struct(*QCOW2_HEADER.subcons, *QCOW2_HEADER_V3.subcons)
"""Bytes 0..103 of a version 3 header: the two layouts above, read in one go."""

QCOW2_COMPRESSION_TYPE = Struct("compression_type" / Int8ub)
"""Byte 104, present when header_length > 104."""

HEADER_EXTENSION = Struct("type" / Int32ub, "length" / Int32ub)
"""Each header extension starts with these 8 bytes; its data follows,
padded to a multiple of 8."""

FEATURE_NAME_ENTRY = Struct("type" / Int8ub, "bit" / Int8ub, "name" / Bytes(46))
"""One 48-byte entry of the feature name table extension."""

BITMAPS_EXTENSION = Struct(
    "nb_bitmaps" / Int32ub,
    "reserved32" / Int32ub,
    "bitmap_directory_size" / Int64ub,
    "bitmap_directory_offset" / Int64ub,
)

FULL_DISK_ENCRYPTION_EXTENSION = Struct("offset" / Int64ub, "length" / Int64ub)

SNAPSHOT_HEADER = Struct(
    "l1_table_offset" / Int64ub,
    "l1_size" / Int32ub,
    "id_str_size" / Int16ub,
    "name_size" / Int16ub,
    "date_sec" / Int32ub,
    "date_nsec" / Int32ub,
    "vm_clock_nsec" / Int64ub,
    "vm_state_size" / Int32ub,
    "extra_data_size" / Int32ub,
)
"""qcow2.txt "Snapshots": the 40 fixed bytes of a snapshot table entry."""

BITMAP_DIRECTORY_ENTRY = Struct(
    "bitmap_table_offset" / Int64ub,
    "bitmap_table_size" / Int32ub,
    "flags" / Int32ub,
    "type" / Int8ub,
    "granularity_bits" / Int8ub,
    "name_size" / Int16ub,
    "extra_data_size" / Int32ub,
)
"""qcow2.txt "Bitmap directory": the 24 fixed bytes of an entry."""

_SNAPSHOT_HEADER_SIZE = SNAPSHOT_HEADER.sizeof()
_FEATURE_ENTRY_SIZE = FEATURE_NAME_ENTRY.sizeof()
#: The extension walk reads many small heads: the declared layout's compiled
#: struct, used only where the walk has checked that 8 bytes are there.
_EXTENSION_HEAD = flat(HEADER_EXTENSION).struct

# -- constants -----------------------------------------------------------------

EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_FULL_DISK_ENCRYPTION = 0x0537BE77
EXT_DATA_FILE = 0x44415441
#: What each extension this decoder reads is called in messages.
_EXTENSION_NAMES = {
    EXT_END: "end of extensions",
    EXT_BACKING_FORMAT: "backing format extension",
    EXT_FEATURE_TABLE: "feature name table",
    EXT_BITMAPS: "bitmaps extension",
    EXT_FULL_DISK_ENCRYPTION: "encryption extension",
    EXT_DATA_FILE: "data file extension",
}
_KNOWN_EXTENSIONS = frozenset(_EXTENSION_NAMES)

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_KNOWN = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2

COMPAT_LAZY_REFCOUNTS = 1 << 0

AUTOCLEAR_BITMAPS = 1 << 0
AUTOCLEAR_DATA_FILE_RAW = 1 << 1

CRYPT_NONE, CRYPT_AES, CRYPT_LUKS = 0, 1, 2
CRYPT_NAMES = {CRYPT_AES: "aes", CRYPT_LUKS: "luks"}
COMPRESSION_NAMES = {0: "zlib", 1: "zstd"}

MIN_CLUSTER_BITS, MAX_CLUSTER_BITS = 9, 21
V2_HEADER_LENGTH = 72
V3_MIN_HEADER_LENGTH = 104
MAX_BACKING_FILE_SIZE = 1023
MAX_BACKING_FORMAT_LENGTH = 15  # qemu keeps it in char[16]
MAX_REFCOUNT_ORDER = 6
MAX_L1_SIZE = 0x2000000  # QCOW_MAX_L1_SIZE, bytes
MAX_REFTABLE_SIZE = 0x800000  # QCOW_MAX_REFTABLE_SIZE, bytes
MAX_SNAPSHOTS = 65536  # QCOW_MAX_SNAPSHOTS
MAX_SNAPSHOT_EXTRA_DATA = 1024  # QCOW_MAX_SNAPSHOT_EXTRA_DATA
MAX_SNAPSHOTS_SIZE = 1024 * MAX_SNAPSHOTS  # QCOW_MAX_SNAPSHOTS_SIZE: the whole table, bytes (64 MiB)
#: The most one snapshot table entry can span (its fixed part, extra data,
#: id and name, and the padding to the next 8-byte boundary).
MAX_SNAPSHOT_ENTRY_SIZE = 40 + MAX_SNAPSHOT_EXTRA_DATA + 2 * 0xFFFF + 7
MAX_BITMAPS = 65535  # QCOW2_MAX_BITMAPS
MAX_BITMAP_DIRECTORY_SIZE = 1024 * MAX_BITMAPS  # QCOW2_MAX_BITMAP_DIRECTORY_SIZE (64 MiB less 64 KiB)
#: Unknown header extensions kept by type and place; the rest are counted.
#: (qemu keeps every one, to write them back when it rewrites the header;
#: nothing here needs more than a few, and a 2 MiB cluster holds 262,131.)
MAX_KEPT_UNKNOWN_EXTENSIONS = 16
#: Extensions walked with one small read each before the rest of the
#: extension area is taken in one piece (images made by qemu have 1 to 4).
_FEW_EXTENSIONS = 16
MAX_BITMAP_NAME_SIZE = 1023
MAX_BITMAP_TABLE_SIZE = 0x8000000
MAX_BITMAP_PHYS_SIZE = 64 * 1024 * 1024
BITMAP_GRANULARITY_BITS = (9, 31)
BITMAP_FLAG_IN_USE = 1 << 0
BITMAP_FLAG_AUTO = 1 << 1
BITMAP_TYPE_DIRTY_TRACKING = 1
INT64_MAX = (1 << 63) - 1
MAX_LENGTH = INT64_MAX & ~((1 << 30) - 1)  # qemu's BDRV_MAX_LENGTH
INT_MAX = (1 << 31) - 1
U64 = (1 << 64) - 1

#: Byte offset of each fixed header field, for error messages.
OFFSETS = {
    "magic": 0,
    "version": 4,
    "backing_file_offset": 8,
    "backing_file_size": 16,
    "cluster_bits": 20,
    "size": 24,
    "crypt_method": 32,
    "l1_size": 36,
    "l1_table_offset": 40,
    "refcount_table_offset": 48,
    "refcount_table_clusters": 56,
    "nb_snapshots": 60,
    "snapshots_offset": 64,
    "incompatible_features": 72,
    "compatible_features": 80,
    "autoclear_features": 88,
    "refcount_order": 96,
    "header_length": 100,
    "compression_type": 104,
}


# -- results -------------------------------------------------------------------


class Qcow2Header(NamedTuple):
    """The fixed header, fields as qcow2.txt names them.  For a version 2
    image the version 3 fields hold the values the spec implies."""

    magic: int
    version: int
    backing_file_offset: int
    backing_file_size: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    nb_snapshots: int
    snapshots_offset: int
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = 4
    header_length: int = V2_HEADER_LENGTH
    compression_type: int = 0


class FeatureName(NamedTuple):
    """An entry of the feature name table: type 0 incompatible, 1
    compatible, 2 autoclear."""

    type: int
    bit: int
    name: str


class HeaderExtension(NamedTuple):
    """An extension this decoder does not interpret, kept by type and place
    (the first :data:`MAX_KEPT_UNKNOWN_EXTENSIONS` of them)."""

    type: int
    offset: int
    length: int


class BitmapsExtension(NamedTuple):
    nb_bitmaps: int
    bitmap_directory_size: int
    bitmap_directory_offset: int


class FullDiskEncryption(NamedTuple):
    """Where the LUKS header lies in the image file."""

    offset: int
    length: int


class Snapshot(NamedTuple):
    """A snapshot table entry, with its extra data resolved as qemu does."""

    id: str
    name: str
    l1_table_offset: int
    l1_size: int
    date_sec: int
    date_nsec: int
    vm_clock_nsec: int
    vm_state_size: int
    disk_size: int | None
    icount: int | None


class Bitmap(NamedTuple):
    """A bitmap directory entry."""

    name: str
    flags: int
    granularity_bits: int
    bitmap_table_offset: int
    bitmap_table_size: int

    @property
    def granularity(self) -> int:
        return 1 << self.granularity_bits

    @property
    def flag_names(self) -> tuple[str, ...]:
        names = []
        if self.flags & BITMAP_FLAG_IN_USE:
            names.append("in-use")
        if self.flags & BITMAP_FLAG_AUTO:
            names.append("auto")
        return tuple(names)


class Qcow2Image(NamedTuple):
    """A decoded qcow2 header and its extensions."""

    header: Qcow2Header
    backing_filename: str | None
    backing_format: str | None
    data_file: str | None
    #: The feature name table extension's raw entries (see ``feature_names``).
    feature_table: bytes
    bitmaps_extension: BitmapsExtension | None
    full_disk_encryption: FullDiskEncryption | None
    #: The first unknown extensions (at most MAX_KEPT_UNKNOWN_EXTENSIONS).
    unknown_extensions: tuple[HeaderExtension, ...]
    #: How many unknown extensions the header holds in all.
    unknown_extension_count: int = 0

    @property
    def format(self) -> str:
        return NAME

    @property
    def feature_names(self) -> tuple[FeatureName, ...]:
        """The feature name table, decoded when asked for (it is only
        needed to name unknown feature bits)."""
        return _feature_table(self.feature_table)

    @property
    def version(self) -> int:
        return self.header.version

    @property
    def compat(self) -> str:
        return "0.10" if self.header.version == 2 else "1.1"

    @property
    def cluster_size(self) -> int:
        return 1 << self.header.cluster_bits

    @property
    def virtual_size(self) -> int:
        # qemu keeps the size in 512-byte sectors, rounding down.
        return self.header.size & ~511

    @property
    def dirty(self) -> bool:
        return bool(self.header.incompatible_features & INCOMPAT_DIRTY)

    @property
    def corrupt(self) -> bool:
        return bool(self.header.incompatible_features & INCOMPAT_CORRUPT)

    @property
    def has_data_file(self) -> bool:
        return bool(self.header.incompatible_features & INCOMPAT_DATA_FILE)

    @property
    def data_file_raw(self) -> bool:
        return bool(self.header.autoclear_features & AUTOCLEAR_DATA_FILE_RAW)

    @property
    def extended_l2(self) -> bool:
        return bool(self.header.incompatible_features & INCOMPAT_EXTL2)

    @property
    def lazy_refcounts(self) -> bool:
        return bool(self.header.compatible_features & COMPAT_LAZY_REFCOUNTS)

    @property
    def refcount_bits(self) -> int:
        return 1 << self.header.refcount_order

    @property
    def compression_type(self) -> str:
        return COMPRESSION_NAMES[self.header.compression_type]

    @property
    def encrypted(self) -> bool:
        return self.header.crypt_method != CRYPT_NONE

    @property
    def encryption_format(self) -> str | None:
        return CRYPT_NAMES.get(self.header.crypt_method)

    @property
    def references(self) -> tuple[Reference, ...]:
        """The backing file (resolved against the image's folder) and the
        external data file (qemu opens a relative one from its working
        folder)."""
        refs = []
        if self.backing_filename:
            refs.append(Reference("backing", self.backing_filename, "image", self.backing_format))
        if self.data_file:
            refs.append(Reference("data-file", self.data_file, "cwd"))  # (opened by a protocol driver: no format)
        return tuple(refs)


# -- decoding ------------------------------------------------------------------


def sniff(buf: bytes) -> bool:
    """qemu's qcow2 probe: the magic, and a version of at least 2.  (Version
    1 is qemu's older "qcow" format; version 0 probes as raw.)"""
    return len(buf) >= 8 and buf[:4] == MAGIC and int.from_bytes(buf[4:8], "big") >= 2


def probe(buf: bytes, filename: str | None = None) -> int:
    """qemu's ``qcow2_probe`` score: 100 where :func:`sniff` holds, else 0."""
    return 100 if len(buf) >= 8 and buf[:4] == MAGIC and int.from_bytes(buf[4:8], "big") >= 2 else 0


def _bad(reason: str, field: str, value: object = None, offset: int | None = None) -> FormatError:
    return FormatError(NAME, reason, field=field, offset=OFFSETS.get(field, offset), value=value)


def _unsupported(reason: str, field: str, value: object = None) -> UnsupportedFeatureError:
    return UnsupportedFeatureError(NAME, reason, field=field, offset=OFFSETS[field], value=value)


def _validate_table(
    offset: int, entries: int, entry_len: int, max_bytes: int, cluster_size: int, what: str, fields: tuple[str, str]
) -> None:
    """qemu's qcow2_validate_table: not too large, and the offset
    cluster-aligned and not overflowing a signed 64-bit file offset."""
    offset_field, count_field = fields
    if entries > max_bytes // entry_len:
        raise _bad(f"{what} too large ({entries} entries, at most {max_bytes // entry_len})", count_field, entries)
    if INT64_MAX - entries * entry_len < offset or offset % cluster_size:
        raise _bad(f"{what} offset {offset:#x} invalid (must be cluster aligned)", offset_field, offset)


_V2_DEFAULTS = (0, 0, 0, 4, V2_HEADER_LENGTH, 0)  # what a version 2 header implies for the v3 fields


def decode_header(data: bytes | Window) -> Qcow2Header:
    """Decode and check the fixed header (the first 72, or 104 and more, bytes)."""
    win = as_window(data)
    first = win.get(0, 8, NAME, "version", 4)
    if first[:4] != MAGIC:
        raise _bad(f"bad magic {first[:4]!r}, expected {MAGIC!r}", "magic", first[:4])
    version = int.from_bytes(first[4:8], "big")
    if version not in (2, 3):
        raise _unsupported(f"version {version} unsupported (qcow2 has versions 2 and 3)", "version", version)
    # One look at the whole fixed header (version 3 is the common case).
    if version == 2:
        fields = unpack(QCOW2_HEADER, win.get(0, V2_HEADER_LENGTH, NAME, "header"), NAME, "header", 0)
    else:
        fields = unpack(QCOW2_HEADER_FIXED_V3, win.get(0, V3_MIN_HEADER_LENGTH, NAME, "header"), NAME, "header", 0)
    cluster_bits = fields[4]
    if not MIN_CLUSTER_BITS <= cluster_bits <= MAX_CLUSTER_BITS:
        raise _bad(
            f"cluster_bits {cluster_bits} outside {MIN_CLUSTER_BITS}..{MAX_CLUSTER_BITS}", "cluster_bits", cluster_bits
        )
    if version == 2:
        header = Qcow2Header._make(fields + _V2_DEFAULTS)
    else:
        header_length = fields[17]
        if header_length < V3_MIN_HEADER_LENGTH:
            raise _bad(f"header_length {header_length} below {V3_MIN_HEADER_LENGTH}", "header_length", header_length)
        if header_length > 1 << cluster_bits:
            raise _bad(
                f"header_length {header_length} exceeds the cluster size {1 << cluster_bits}",
                "header_length",
                header_length,
            )
        compression_type = 0
        if header_length > OFFSETS["compression_type"]:
            # The rest of the header (bytes 105.. header_length) is padding or
            # fields newer than this decoder: they still have to be there.
            rest = win.get(V3_MIN_HEADER_LENGTH, header_length - V3_MIN_HEADER_LENGTH, NAME, "header", 100)
            (compression_type,) = unpack(QCOW2_COMPRESSION_TYPE, rest[:1], NAME, "compression_type", 104)
        header = Qcow2Header._make((*fields, compression_type))
    _check_header(header)
    return header


def _check_header(h: Qcow2Header) -> None:
    """The header rules of qcow2_do_open, in qemu's order (less the unknown
    incompatible bits, which need the feature name table to be named)."""
    cluster_size = 1 << h.cluster_bits
    if h.backing_file_offset > cluster_size:
        raise _bad(
            f"backing_file_offset {h.backing_file_offset:#x} beyond the first cluster ({cluster_size} bytes)",
            "backing_file_offset",
            h.backing_file_offset,
        )
    if h.refcount_order > MAX_REFCOUNT_ORDER:
        raise _bad(
            f"refcount_order {h.refcount_order} above {MAX_REFCOUNT_ORDER} (refcounts of at most 64 bits)",
            "refcount_order",
            h.refcount_order,
        )
    if h.crypt_method > CRYPT_LUKS:
        raise _unsupported(
            f"crypt_method {h.crypt_method} unknown (0 none, 1 aes, 2 luks)", "crypt_method", h.crypt_method
        )
    if h.compression_type not in COMPRESSION_NAMES:
        raise _unsupported(
            f"compression_type {h.compression_type} unknown (0 zlib, 1 zstd)", "compression_type", h.compression_type
        )
    if (h.compression_type != 0) != bool(h.incompatible_features & INCOMPAT_COMPRESSION):
        must = "must" if h.compression_type else "must not"
        raise _bad(
            f"the compression type bit {must} be set with compression_type {h.compression_type}",
            "incompatible_features",
            h.incompatible_features,
        )
    extended_l2 = bool(h.incompatible_features & INCOMPAT_EXTL2)
    if extended_l2 and h.cluster_bits - 5 < MIN_CLUSTER_BITS:
        raise _bad(
            f"extended L2 entries need clusters of at least 16384 bytes, not {cluster_size}",
            "incompatible_features",
            h.incompatible_features,
        )
    if h.refcount_table_clusters == 0:
        raise _bad("no reference count table (refcount_table_clusters is 0)", "refcount_table_clusters", 0)
    _validate_table(
        h.refcount_table_offset,
        h.refcount_table_clusters,
        cluster_size,
        MAX_REFTABLE_SIZE,
        cluster_size,
        "reference count table",
        ("refcount_table_offset", "refcount_table_clusters"),
    )
    if h.nb_snapshots > MAX_SNAPSHOTS:
        raise _bad(f"nb_snapshots {h.nb_snapshots} above {MAX_SNAPSHOTS}", "nb_snapshots", h.nb_snapshots)
    entry = _SNAPSHOT_HEADER_SIZE
    _validate_table(
        h.snapshots_offset,
        h.nb_snapshots,
        entry,
        entry * MAX_SNAPSHOTS,
        cluster_size,
        "snapshot table",
        ("snapshots_offset", "nb_snapshots"),
    )
    _validate_table(
        h.l1_table_offset, h.l1_size, 8, MAX_L1_SIZE, cluster_size, "L1 table", ("l1_table_offset", "l1_size")
    )
    shift = h.cluster_bits + h.cluster_bits - (4 if extended_l2 else 3)
    l1_needed = ((h.size + (1 << shift) - 1) & U64) >> shift  # C arithmetic: wraps at 2**64
    if l1_needed > INT_MAX:
        raise _bad(f"size {h.size} too big", "size", h.size)
    if h.l1_size < l1_needed:
        raise _bad(f"l1_size {h.l1_size} too small for size {h.size} (needs {l1_needed})", "l1_size", h.l1_size)
    if h.size & ~511 > MAX_LENGTH:
        raise _bad(f"size {h.size} larger than {MAX_LENGTH}", "size", h.size)


def _feature_table(raw: bytes) -> tuple[FeatureName, ...]:
    size = _FEATURE_ENTRY_SIZE
    entries = []
    for pos in range(0, len(raw) - size + 1, size):
        kind, bit, name = unpack(FEATURE_NAME_ENTRY, raw[pos : pos + size], NAME, "feature name table", pos)
        if name[0] == 0:
            break  # qemu reads the table up to the first entry with an empty name
        entries.append(FeatureName(kind, bit, c_string(name)))
    return tuple(entries)


def decode(data: bytes | Window) -> Qcow2Image:
    """Decode a qcow2 image: the header, its extensions and the backing
    file name.  ``data`` is the whole file, or a :class:`Window` on it."""
    win = as_window(data)
    h = decode_header(win)
    cluster_size = 1 << h.cluster_bits
    # Extensions run from the end of the header to the backing file name, or
    # to the end of the first cluster.
    ext_end = h.backing_file_offset or cluster_size

    backing_format = data_file = None
    feature_table = b""
    bitmaps = crypto = None
    unknown: list[HeaderExtension] = []
    n_unknown = 0
    # The walk reads the area through ``area`` (file bytes from ``base`` on):
    # the first read (which usually holds the whole area), then one small
    # read per extension for the first few beyond it, then, for a header
    # with many, the rest of the area in one piece.
    area, base = win.head, 0
    walked = 0
    offset = h.header_length
    while offset < ext_end:
        if offset + 8 > ext_end:
            raise _bad(
                f"header extension at {offset:#x} runs past the header area (ends {ext_end:#x})",
                "extension",
                offset=offset,
            )
        at = offset - base
        if at + 8 > len(area):
            # Read ahead to the end of the extension area: one read, however many.
            if walked < _FEW_EXTENSIONS:
                area = win.get(offset, 8, NAME, "header extension", ahead=ext_end - offset)
            else:
                rest = max(8, min(ext_end, win.size) - offset)
                area = win.get(offset, rest, NAME, "header extension", ahead=ext_end - offset)
            base, at = offset, 0
        kind, length = _EXTENSION_HEAD.unpack_from(area, at)
        walked += 1
        start = offset + 8
        if length > ext_end - start:
            raise _bad(
                f"header extension {kind:#010x} of {length} bytes runs past the header area (ends {ext_end:#x})",
                "extension length",
                length,
                offset=offset + 4,
            )
        if kind not in _KNOWN_EXTENSIONS:  # kept by place (the first few), its body not read
            if n_unknown < MAX_KEPT_UNKNOWN_EXTENSIONS:
                unknown.append(HeaderExtension(kind, offset, length))
            n_unknown += 1
            offset = start + ((length + 7) & ~7)
            continue
        if kind == EXT_END:
            break
        body_at = start - base
        if body_at + length <= len(area):
            body = area[body_at : body_at + length]
        else:
            body = win.get(start, length, NAME, _EXTENSION_NAMES[kind], offset)
        if kind == EXT_BACKING_FORMAT:
            if length > MAX_BACKING_FORMAT_LENGTH:
                raise _bad(
                    f"backing format name of {length} bytes (at most {MAX_BACKING_FORMAT_LENGTH})",
                    "backing format extension length",
                    length,
                    offset=offset + 4,
                )
            # An empty name records nothing: qemu probes, as if there were none.
            backing_format = c_string(body) or None
        elif kind == EXT_FEATURE_TABLE:
            feature_table = body
        elif kind == EXT_FULL_DISK_ENCRYPTION:
            crypto = _full_disk_encryption(h, body, offset)
        elif kind == EXT_BITMAPS:
            bitmaps = _bitmaps_extension(h, body, offset)
        else:  # EXT_DATA_FILE
            data_file = c_string(body)
        offset = start + ((length + 7) & ~7)

    _check_incompatible(h, feature_table)

    backing = None
    if h.backing_file_offset:
        size = h.backing_file_size
        limit = min(MAX_BACKING_FILE_SIZE, cluster_size - h.backing_file_offset)
        if size > limit:
            raise _bad(f"backing_file_size {size} too long (at most {limit} here)", "backing_file_size", size)
        raw = win.get(h.backing_file_offset, size, NAME, "backing file name", OFFSETS["backing_file_offset"])
        backing = c_string(raw) or None

    # (positional, in field order, as _make makes it: this runs for every image)
    return make_record(
        Qcow2Image,
        (
            h,
            backing,
            backing_format if backing else None,
            data_file,
            feature_table,
            bitmaps,
            crypto,
            tuple(unknown),
            n_unknown,
        ),
    )


def _full_disk_encryption(h: Qcow2Header, body: bytes, offset: int) -> FullDiskEncryption:
    if h.crypt_method != CRYPT_LUKS:
        raise _bad("full disk encryption header extension without LUKS encryption", "crypt_method", h.crypt_method)
    if len(body) != 16:
        raise _bad(
            f"full disk encryption extension of {len(body)} bytes, expected 16",
            "extension length",
            len(body),
            offset=offset + 4,
        )
    fde = parse(FULL_DISK_ENCRYPTION_EXTENSION, body, NAME, "full disk encryption extension", offset + 8)
    if fde.offset % (1 << h.cluster_bits):
        raise _bad(
            f"LUKS header offset {fde.offset:#x} not cluster aligned",
            "full disk encryption offset",
            fde.offset,
            offset=offset + 8,
        )
    return FullDiskEncryption(fde.offset, fde.length)


def _bitmaps_extension(h: Qcow2Header, body: bytes, offset: int) -> BitmapsExtension | None:
    data = offset + 8
    if len(body) != 24:
        raise _bad(
            f"bitmaps extension of {len(body)} bytes, expected 24", "extension length", len(body), offset=offset + 4
        )
    if not h.autoclear_features & AUTOCLEAR_BITMAPS:
        # A program without bitmap support wrote the image: qemu ignores the
        # bitmaps (they are inconsistent) and opens the image.
        return None
    b = parse(BITMAPS_EXTENSION, body, NAME, "bitmaps extension", data)
    if b.reserved32:
        raise _bad("bitmaps extension reserved field not zero", "bitmaps reserved32", b.reserved32, offset=data + 4)
    if b.nb_bitmaps > MAX_BITMAPS:
        raise _bad(f"nb_bitmaps {b.nb_bitmaps} above {MAX_BITMAPS}", "nb_bitmaps", b.nb_bitmaps, offset=data)
    if b.nb_bitmaps == 0:
        raise _bad("bitmaps extension with zero bitmaps", "nb_bitmaps", 0, offset=data)
    if b.bitmap_directory_offset % (1 << h.cluster_bits):
        raise _bad(
            f"bitmap_directory_offset {b.bitmap_directory_offset:#x} not cluster aligned",
            "bitmap_directory_offset",
            b.bitmap_directory_offset,
            offset=data + 16,
        )
    if b.bitmap_directory_size > MAX_BITMAP_DIRECTORY_SIZE:
        raise _bad(
            f"bitmap_directory_size {b.bitmap_directory_size} above {MAX_BITMAP_DIRECTORY_SIZE}",
            "bitmap_directory_size",
            b.bitmap_directory_size,
            offset=data + 8,
        )
    return BitmapsExtension(b.nb_bitmaps, b.bitmap_directory_size, b.bitmap_directory_offset)


def _check_incompatible(h: Qcow2Header, feature_table: bytes) -> None:
    unknown = h.incompatible_features & ~INCOMPAT_KNOWN
    if not unknown:
        return
    named = {f.bit: f.name for f in _feature_table(feature_table) if f.type == 0}
    parts = []
    for bit in range(64):
        if unknown >> bit & 1:
            name = named.get(bit)
            parts.append(f"{name!r} (bit {bit})" if name else f"unknown bit {bit}")
    raise _unsupported(
        "unsupported incompatible feature(s): " + ", ".join(parts), "incompatible_features", h.incompatible_features
    )


def snapshot_table_span(image: Qcow2Image) -> int:
    """The most bytes the snapshot table of ``image`` can span and still be
    opened by qemu (its entries may not end past QCOW_MAX_SNAPSHOTS_SIZE)."""
    return min(image.header.nb_snapshots * MAX_SNAPSHOT_ENTRY_SIZE, MAX_SNAPSHOTS_SIZE)


def decode_snapshot_table(data: bytes | Window, image: Qcow2Image) -> tuple[Snapshot, ...]:
    """Decode the snapshot table at ``snapshots_offset``, as qemu's
    qcow2_read_snapshots reads it at open.

    Linear in the size of the table: when bytes must be read, the window is
    asked for at least as many again as were decoded so far, and for at
    least the fixed part of every entry still to come, so a table takes a
    handful of reads (and so of decoding passes), whatever its size.
    """
    win = as_window(data)
    h = image.header
    count = h.nb_snapshots
    table = h.snapshots_offset
    limit = table + MAX_SNAPSHOTS_SIZE  # no entry may end past this
    fixed = _SNAPSHOT_HEADER_SIZE
    snapshots = []
    pos = table
    for i in range(count):
        pos = (pos + 7) & ~7
        what = f"snapshot table entry {i}"
        if pos + fixed > limit:
            raise _bad(f"snapshot table larger than {MAX_SNAPSHOTS_SIZE} bytes", "nb_snapshots", count)
        ahead = min(limit - pos, max(pos - table, (count - i) * fixed))
        (
            l1_table_offset,
            l1_size,
            id_str_size,
            name_size,
            date_sec,
            date_nsec,
            vm_clock_nsec,
            vm_state_size,
            extra_size,
        ) = unpack(SNAPSHOT_HEADER, win.get(pos, fixed, NAME, what, ahead=ahead), NAME, what, pos)
        if extra_size > MAX_SNAPSHOT_EXTRA_DATA:
            raise _bad(
                f"{what}: extra_data_size {extra_size} above {MAX_SNAPSHOT_EXTRA_DATA}",
                "extra_data_size",
                extra_size,
                offset=pos + 36,
            )
        end = pos + fixed + extra_size + id_str_size + name_size
        if end > limit:
            raise _bad(f"snapshot table larger than {MAX_SNAPSHOTS_SIZE} bytes", "nb_snapshots", count)
        rest = win.get(pos + fixed, end - pos - fixed, NAME, what, pos, ahead=ahead - fixed)
        names = extra_size + id_str_size
        pos = end
        if extra_size >= 8:
            vm_state_size = int.from_bytes(rest[0:8], "big")
        disk_size = int.from_bytes(rest[8:16], "big") if extra_size >= 16 else None
        icount = int.from_bytes(rest[16:24], "big") if extra_size >= 24 else None
        # (positional, in field order: a table may hold 65,536 entries)
        snapshots.append(
            Snapshot(
                c_string(rest[extra_size:names]),
                c_string(rest[names:]),
                l1_table_offset,
                l1_size,
                date_sec,
                date_nsec,
                vm_clock_nsec,
                vm_state_size,
                disk_size,
                None if icount == U64 else icount,
            )
        )
    return tuple(snapshots)


def decode_bitmap_directory(data: bytes | Window, image: Qcow2Image) -> tuple[Bitmap, ...]:
    """Decode the bitmap directory that the bitmaps extension points at, with
    the checks qemu makes when it loads the bitmaps at open (it does so
    read-only too).  The bitmap tables themselves are not read."""
    ext = image.bitmaps_extension
    if ext is None:
        return ()
    base, size = ext.bitmap_directory_offset, ext.bitmap_directory_size
    if size == 0:
        raise _bad("bitmap_directory_size is zero", "bitmap_directory_size", 0, offset=base)
    directory = as_window(data).get(base, size, NAME, "bitmap directory", base)
    fixed = flat(BITMAP_DIRECTORY_ENTRY).size
    bitmaps: list[Bitmap] = []
    names: set[str] = set()
    pos = 0
    while pos < size:
        what = f"bitmap directory entry {len(bitmaps)}"
        if pos + fixed > size:
            raise _bad(
                f"{what} runs past bitmap_directory_size {size}", "bitmap_directory_size", size, offset=base + pos
            )
        e = parse(BITMAP_DIRECTORY_ENTRY, directory[pos : pos + fixed], NAME, what, base + pos)
        name_at = pos + fixed + e.extra_data_size
        entry_end = name_at + e.name_size
        if entry_end > size:
            raise _bad(
                f"{what} runs past bitmap_directory_size {size}", "bitmap_directory_size", size, offset=base + pos
            )
        if len(bitmaps) == ext.nb_bitmaps:
            raise _bad(f"more bitmaps in the directory than nb_bitmaps {ext.nb_bitmaps}", "nb_bitmaps", ext.nb_bitmaps)
        if e.extra_data_size:
            raise UnsupportedFeatureError(
                NAME,
                f"{what} has extra data, which qemu does not support",
                field="extra_data_size",
                offset=base + pos + 20,
            )
        name = c_string(directory[name_at:entry_end])
        problem = _bitmap_entry_problem(e, image.cluster_size, image.virtual_size)
        if problem:
            raise _bad(f"bitmap {name!r}: {problem}", "bitmap directory", offset=base + pos)
        if name in names:
            raise _bad(f"bitmap {name!r} appears twice", "bitmap directory", offset=base + pos)
        names.add(name)
        bitmaps.append(Bitmap(name, e.flags, e.granularity_bits, e.bitmap_table_offset, e.bitmap_table_size))
        pos = (entry_end + 7) & ~7
    if pos != size:
        raise _bad(f"bitmap directory entries end at {pos}, not at its size {size}", "bitmap_directory_size", size)
    if len(bitmaps) != ext.nb_bitmaps:
        raise _bad(
            f"bitmap directory holds {len(bitmaps)} entries, nb_bitmaps says {ext.nb_bitmaps}",
            "nb_bitmaps",
            ext.nb_bitmaps,
        )
    return tuple(bitmaps)


def _bitmap_entry_problem(e: Any, cluster_size: int, virtual_size: int) -> str | None:
    """qemu's check_dir_entry: what is wrong with a directory entry, if anything."""
    lo, hi = BITMAP_GRANULARITY_BITS
    checks = (
        (e.bitmap_table_size == 0, "bitmap_table_size is 0"),
        (e.bitmap_table_offset == 0, "bitmap_table_offset is 0"),
        (e.bitmap_table_offset % cluster_size != 0, "bitmap_table_offset not cluster aligned"),
        (e.bitmap_table_size > MAX_BITMAP_TABLE_SIZE, f"bitmap_table_size above {MAX_BITMAP_TABLE_SIZE}"),
        (not lo <= e.granularity_bits <= hi, f"granularity_bits {e.granularity_bits} outside {lo}..{hi}"),
        (e.flags & ~(BITMAP_FLAG_IN_USE | BITMAP_FLAG_AUTO) != 0, f"reserved flags set ({e.flags:#x})"),
        (e.name_size > MAX_BITMAP_NAME_SIZE, f"name_size above {MAX_BITMAP_NAME_SIZE}"),
        (e.type != BITMAP_TYPE_DIRTY_TRACKING, f"type {e.type} is not 1 (dirty tracking)"),
        (e.bitmap_table_size * cluster_size > MAX_BITMAP_PHYS_SIZE, "bitmap table larger than 64 MiB"),
        (
            not e.flags & BITMAP_FLAG_IN_USE
            and virtual_size > (e.bitmap_table_size * cluster_size * 8) << e.granularity_bits,
            "bitmap table too small for the image",
        ),
    )
    return next((why for bad, why in checks if bad), None)
