"""QED: the header and the backing file name.

Field names and rules follow qemu's ``docs/interop/qed_spec.txt``; the
refusals are those of qemu 7.2's ``bdrv_qed_do_open``.  Little-endian
throughout.  Pure: see ``formats._base`` for the ``buf``/``file_size``
protocol.
"""

from __future__ import annotations

from typing import NamedTuple

from construct import Int32ul, Int64ul, Struct

from imgchain.errors import FormatError, UnsupportedFeatureError

from ._base import Reference, Window, as_window, c_string, has_none_of, unpack

NAME = "qed"
MAGIC = b"QED\0"

QED_HEADER = Struct(
    "magic" / Int32ul,  # 0
    "cluster_size" / Int32ul,  # 4
    "table_size" / Int32ul,  # 8, in clusters
    "header_size" / Int32ul,  # 12, in clusters
    "features" / Int64ul,  # 16
    "compat_features" / Int64ul,  # 24
    "autoclear_features" / Int64ul,  # 32
    "l1_table_offset" / Int64ul,  # 40
    "image_size" / Int64ul,  # 48
    "backing_filename_offset" / Int32ul,  # 56
    "backing_filename_size" / Int32ul,  # 60
)
"""qed_spec.txt "Header"."""

_HEADER_SIZE = QED_HEADER.sizeof()

OFFSETS = {
    "magic": 0,
    "cluster_size": 4,
    "table_size": 8,
    "header_size": 12,
    "features": 16,
    "compat_features": 24,
    "autoclear_features": 32,
    "l1_table_offset": 40,
    "image_size": 48,
    "backing_filename_offset": 56,
    "backing_filename_size": 60,
}

F_BACKING_FILE = 1 << 0
F_NEED_CHECK = 1 << 1
F_BACKING_FORMAT_NO_PROBE = 1 << 2
FEATURE_MASK = F_BACKING_FILE | F_NEED_CHECK | F_BACKING_FORMAT_NO_PROBE

MIN_CLUSTER_SIZE, MAX_CLUSTER_SIZE = 4 * 1024, 64 * 1024 * 1024
MIN_TABLE_SIZE, MAX_TABLE_SIZE = 1, 16
MAX_BACKING_FILENAME_SIZE = 4095  # qemu reads it into char[PATH_MAX]
UINT32_MAX = (1 << 32) - 1
U64 = (1 << 64) - 1
SECTOR_SIZE = 512


class QedHeader(NamedTuple):
    """The header, fields as qed_spec.txt names them."""

    magic: int
    cluster_size: int
    table_size: int
    header_size: int
    features: int
    compat_features: int
    autoclear_features: int
    l1_table_offset: int
    image_size: int
    backing_filename_offset: int
    backing_filename_size: int


@has_none_of("corrupt", "encrypted", "data_file")
class QedImage(NamedTuple):
    """A decoded QED header."""

    header: QedHeader
    backing_filename: str | None

    @property
    def format(self) -> str:
        return NAME

    @property
    def cluster_size(self) -> int:
        return self.header.cluster_size

    @property
    def virtual_size(self) -> int:
        return self.header.image_size

    @property
    def dirty(self) -> bool:
        """QED's need-check bit: the image was not closed cleanly.  (qemu-img
        info reports ``dirty-flag: false`` for QED whatever this says.)"""
        return bool(self.header.features & F_NEED_CHECK)

    @property
    def backing_format_no_probe(self) -> bool:
        return bool(self.header.features & F_BACKING_FORMAT_NO_PROBE)

    @property
    def backing_format(self) -> str | None:
        """QED can record one backing format only: raw, by the no-probe bit."""
        return "raw" if self.backing_filename and self.backing_format_no_probe else None

    @property
    def references(self) -> tuple[Reference, ...]:
        if not self.backing_filename:
            return ()
        return (Reference("backing", self.backing_filename, "image", self.backing_format),)


def sniff(buf: bytes) -> bool:
    """qemu's QED probe: the magic alone."""
    return buf[:4] == MAGIC


def probe(buf: bytes, filename: str | None = None) -> int:
    """qemu's ``bdrv_qed_probe`` score: 100 for the magic, else 0."""
    return 100 if buf[:4] == MAGIC else 0


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _bad(reason: str, field: str, value: object) -> FormatError:
    return FormatError(NAME, reason, field=field, offset=OFFSETS[field], value=value)


def max_image_size(cluster_size: int, table_size: int) -> int:
    """The largest virtual size two levels of tables can map, computed as
    qemu's qed_max_image_size computes it: in unsigned 64-bit arithmetic,
    which wraps to 0 where the true figure reaches 2**64 (4 MiB clusters
    with 4-cluster tables, 2 MiB with 16, 64 MiB with 2, ...), so that qemu
    refuses every such image whose size is not 0."""
    entries = table_size * cluster_size // 8
    l2_size = entries * cluster_size & U64
    return l2_size * entries & U64


def decode(data: bytes | Window) -> QedImage:
    """Decode a QED image: the header and the backing file name.  ``data``
    is the whole file, or a :class:`Window` on it."""
    win = as_window(data)
    raw = win.get(0, _HEADER_SIZE, NAME, "header", 0)
    if raw[:4] != MAGIC:
        raise _bad(f"bad magic {raw[:4]!r}, expected {MAGIC!r}", "magic", raw[:4])
    h = QedHeader._make(unpack(QED_HEADER, raw, NAME, "header", 0))
    if h.features & ~FEATURE_MASK:
        raise UnsupportedFeatureError(
            NAME,
            f"unknown feature bits {h.features & ~FEATURE_MASK:#x}",
            field="features",
            offset=OFFSETS["features"],
            value=h.features,
        )
    if not (_power_of_two(h.cluster_size) and MIN_CLUSTER_SIZE <= h.cluster_size <= MAX_CLUSTER_SIZE):
        raise _bad(f"cluster_size {h.cluster_size} not a power of two in 4 KiB..64 MiB", "cluster_size", h.cluster_size)
    if not (_power_of_two(h.table_size) and MIN_TABLE_SIZE <= h.table_size <= MAX_TABLE_SIZE):
        raise _bad(f"table_size {h.table_size} not a power of two in 1..16", "table_size", h.table_size)
    limit = max_image_size(h.cluster_size, h.table_size)
    if h.image_size % 512 or h.image_size > limit:
        raise _bad(f"image_size {h.image_size} not a multiple of 512 at most {limit}", "image_size", h.image_size)
    if h.header_size > UINT32_MAX // h.cluster_size:
        raise _bad(f"header_size {h.header_size} clusters invalid", "header_size", h.header_size)
    header_bytes = h.header_size * h.cluster_size
    _check_l1_table(h, header_bytes, win.size)

    backing = None
    if h.features & F_BACKING_FILE:
        start, n = h.backing_filename_offset, h.backing_filename_size
        if start + n > header_bytes:
            raise _bad(
                f"backing file name at {start:#x}+{n} outside the header clusters ({header_bytes} bytes)",
                "backing_filename_offset",
                start,
            )
        if n > MAX_BACKING_FILENAME_SIZE:
            raise _bad(f"backing_filename_size {n} above {MAX_BACKING_FILENAME_SIZE}", "backing_filename_size", n)
        name = win.get(start, n, NAME, "backing file name", OFFSETS["backing_filename_offset"])
        backing = c_string(name) or None
    return QedImage(h, backing)


def _check_l1_table(h: QedHeader, header_bytes: int, file_size: int) -> None:
    """qemu's qed_check_table_offset: the L1 table's first and last clusters
    are cluster aligned, after the header, and inside the file: the file's
    length as qemu's block layer gives it (``bdrv_getlength``: whole 512-byte
    sectors, rounded up), then rounded down to whole clusters.  qemu 7.2
    also insists that the last cluster comes after the first, so it refuses every image with a
    one-cluster table (``table_size`` 1), even one it made itself; we refuse
    them too, since no qemu can open them."""
    file_size = -(-file_size // SECTOR_SIZE) * SECTOR_SIZE
    file_end = file_size - file_size % h.cluster_size
    first = h.l1_table_offset
    last = first + (h.table_size - 1) * h.cluster_size

    def ok_cluster(offset: int) -> bool:
        return offset % h.cluster_size == 0 and header_bytes <= offset < file_end

    ok = last > first and ok_cluster(first) and ok_cluster(last)
    if not ok:
        raise _bad(
            f"l1_table_offset {first:#x} invalid: the L1 table ({h.table_size} clusters) must be cluster aligned, "
            f"after the header, inside the file, and (as qemu 7.2 requires) longer than one cluster",
            "l1_table_offset",
            first,
        )
