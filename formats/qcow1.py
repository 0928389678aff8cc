"""qcow, version 1: qemu's original copy-on-write format.

The header is qemu's ``QCowHeader`` (``block/qcow.c``; qcow has no spec in
``docs/interop``), big-endian, 48 bytes.  The refusals are those of qemu
7.2's ``qcow_open``, in its order; qemu-img opens an AES-encrypted image
(``crypt_method`` 1) for ``info`` without a key, so it is decoded here too,
with ``encrypted`` set.  (System emulators refuse AES images: the audit can
say so.)

qcow records no backing format: qemu probes the backing file.

Pure: bytes in, an immutable record out; see ``formats._base`` for the
window protocol.
"""

from __future__ import annotations

from typing import NamedTuple

from construct import Int8ub, Int16ub, Int32ub, Int64ub, Struct

from imgchain.errors import FormatError, UnsupportedFeatureError

from ._base import Reference, Window, as_window, c_string, has_none_of, unpack

NAME = "qcow"
MAGIC = b"QFI\xfb"
VERSION = 1

QCOW_HEADER = Struct(
    "magic" / Int32ub,  # 0
    "version" / Int32ub,  # 4
    "backing_file_offset" / Int64ub,  # 8
    "backing_file_size" / Int32ub,  # 16
    "mtime" / Int32ub,  # 20
    "size" / Int64ub,  # 24, bytes
    "cluster_bits" / Int8ub,  # 32
    "l2_bits" / Int8ub,  # 33
    "padding" / Int16ub,  # 34
    "crypt_method" / Int32ub,  # 36
    "l1_table_offset" / Int64ub,  # 40
)
"""qemu's ``QCowHeader`` (block/qcow.c), 48 bytes."""

HEADER_SIZE = QCOW_HEADER.sizeof()

OFFSETS = {
    "magic": 0,
    "version": 4,
    "backing_file_offset": 8,
    "backing_file_size": 16,
    "mtime": 20,
    "size": 24,
    "cluster_bits": 32,
    "l2_bits": 33,
    "padding": 34,
    "crypt_method": 36,
    "l1_table_offset": 40,
}

CRYPT_NONE, CRYPT_AES = 0, 1
MIN_CLUSTER_BITS, MAX_CLUSTER_BITS = 9, 16  # 512 bytes .. 64 KiB
MIN_L2_BITS, MAX_L2_BITS = 6, 13  # L2 tables of 512 bytes .. 64 KiB (8-byte entries)
MAX_BACKING_FILE_SIZE = 1023
INT_MAX = (1 << 31) - 1
U64 = (1 << 64) - 1
INT64_MAX = (1 << 63) - 1
MAX_LENGTH = INT64_MAX & ~((1 << 30) - 1)  # qemu's BDRV_MAX_LENGTH: the furthest any read may reach


class QcowHeader(NamedTuple):
    """The header, fields as qemu's ``QCowHeader`` names them."""

    magic: int
    version: int
    backing_file_offset: int
    backing_file_size: int
    mtime: int
    size: int
    cluster_bits: int
    l2_bits: int
    padding: int
    crypt_method: int
    l1_table_offset: int


@has_none_of("backing_format", "dirty", "corrupt", "data_file")
class QcowImage(NamedTuple):
    """A decoded qcow (version 1) header and its backing file name."""

    header: QcowHeader
    backing_filename: str | None

    @property
    def format(self) -> str:
        return NAME

    @property
    def virtual_size(self) -> int:
        # qemu keeps the size in whole 512-byte sectors, rounding down.
        return self.header.size & ~511

    @property
    def cluster_size(self) -> int:
        return 1 << self.header.cluster_bits

    @property
    def l1_size(self) -> int:
        """Entries of the L1 table, as qemu computes them."""
        shift = self.header.cluster_bits + self.header.l2_bits
        return (self.header.size + (1 << shift) - 1) >> shift

    @property
    def encrypted(self) -> bool:
        return self.header.crypt_method != CRYPT_NONE

    @property
    def encryption_format(self) -> str | None:
        return "aes" if self.header.crypt_method == CRYPT_AES else None

    @property
    def references(self) -> tuple[Reference, ...]:
        """The backing file, resolved against the image's folder, format
        unrecorded (qemu probes it)."""
        if not self.backing_filename:
            return ()
        return (Reference("backing", self.backing_filename, "image", None),)


def probe(buf: bytes, filename: str | None = None) -> int:
    """qemu's ``qcow_probe``: 100 for the magic with version 1, else 0.
    (qemu probes a 512-byte buffer, zero-filled past the end of a short
    file, so 8 bytes are enough to decide.)"""
    return 100 if len(buf) >= 8 and buf[:4] == MAGIC and int.from_bytes(buf[4:8], "big") == VERSION else 0


def sniff(buf: bytes) -> bool:
    """For the registry: does qemu probe ``buf`` as qcow?"""
    return probe(buf) > 0


def _bad(reason: str, field: str, value: object = None) -> FormatError:
    return FormatError(NAME, reason, field=field, offset=OFFSETS[field], value=value)


def _readable(offset: int, length: int) -> bool:
    """Whether qemu's block layer accepts a read of ``length`` bytes at
    ``offset`` (``bdrv_check_request``: inside 0..BDRV_MAX_LENGTH)."""
    return offset <= MAX_LENGTH and length <= MAX_LENGTH - offset


def decode_header(data: bytes | Window) -> QcowHeader:
    """Decode and check the 48-byte header, with qemu 7.2's ``qcow_open`` rules."""
    win = as_window(data)
    raw = win.get(0, HEADER_SIZE, NAME, "header", 0)
    h = QcowHeader._make(unpack(QCOW_HEADER, raw, NAME, "header", 0))
    if raw[:4] != MAGIC:
        raise _bad(f"bad magic {raw[:4]!r}, expected {MAGIC!r}", "magic", raw[:4])
    if h.version != VERSION:
        hint = " (versions 2 and 3 are qcow2)" if h.version in (2, 3) else ""
        raise UnsupportedFeatureError(
            NAME,
            f"version {h.version} unsupported (qcow is version 1){hint}",
            field="version",
            offset=OFFSETS["version"],
            value=h.version,
        )
    if h.size <= 1:
        raise _bad(f"size {h.size} too small (must be at least 2 bytes)", "size", h.size)
    if not MIN_CLUSTER_BITS <= h.cluster_bits <= MAX_CLUSTER_BITS:
        raise _bad(
            f"cluster_bits {h.cluster_bits} outside {MIN_CLUSTER_BITS}..{MAX_CLUSTER_BITS} (512 bytes .. 64 KiB)",
            "cluster_bits",
            h.cluster_bits,
        )
    if not MIN_L2_BITS <= h.l2_bits <= MAX_L2_BITS:
        raise _bad(
            f"l2_bits {h.l2_bits} outside {MIN_L2_BITS}..{MAX_L2_BITS} (L2 tables of 512 bytes .. 64 KiB)",
            "l2_bits",
            h.l2_bits,
        )
    if h.crypt_method > CRYPT_AES:
        raise UnsupportedFeatureError(
            NAME,
            f"crypt_method {h.crypt_method} unknown (0 none, 1 AES)",
            field="crypt_method",
            offset=OFFSETS["crypt_method"],
            value=h.crypt_method,
        )
    shift = h.cluster_bits + h.l2_bits
    if h.size > U64 - (1 << shift):
        raise _bad(f"size {h.size} too large", "size", h.size)
    l1_size = (h.size + (1 << shift) - 1) >> shift
    if l1_size > INT_MAX // 8:
        raise _bad(f"size {h.size} too large (an L1 table of {l1_size} entries)", "size", h.size)
    if not _readable(h.l1_table_offset, l1_size * 8):
        raise _bad(
            f"l1_table_offset {h.l1_table_offset:#x} beyond what qemu can read", "l1_table_offset", h.l1_table_offset
        )
    return h


def decode(data: bytes | Window) -> QcowImage:
    """Decode a qcow image: the header and the backing file name.  ``data``
    is the whole file, or a :class:`Window` on it."""
    win = as_window(data)
    h = decode_header(win)
    backing = None
    if h.backing_file_offset:
        size = h.backing_file_size
        if size > MAX_BACKING_FILE_SIZE:
            raise _bad(
                f"backing_file_size {size} too long (at most {MAX_BACKING_FILE_SIZE})", "backing_file_size", size
            )
        if not _readable(h.backing_file_offset, size):
            raise _bad(
                f"backing_file_offset {h.backing_file_offset:#x} beyond what qemu can read",
                "backing_file_offset",
                h.backing_file_offset,
            )
        raw = win.get(h.backing_file_offset, size, NAME, "backing file name", OFFSETS["backing_file_offset"])
        backing = c_string(raw) or None
    return QcowImage(h, backing)
