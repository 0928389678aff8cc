"""parallels: the Parallels (Virtuozzo) expanding disk image, as qemu 7.2's
``block/parallels.c`` opens it.

Layout and names: ``docs/interop/parallels.txt`` (little-endian, a 64-byte
header, then the BAT).  The rules are qemu 7.2's:

* **Probe** (``parallels_probe``): 100 when the magic is
  ``WithoutFreeSpace`` or ``WithouFreSpacExt`` **and** the version is 2.  A
  file with either magic and another version is raw to qemu.
* **Open**: version 2 and one of the two magics; with the first magic only
  the low 32 bits of ``nb_sectors`` count; ``tracks`` (sectors per
  cluster) non-zero and at most INT32_MAX / 513 ("Too big cluster");
  ``bat_entries`` at most INT_MAX / 4 ("Catalog too large").  A set
  ``inuse`` (0x746F6E59: not closed cleanly) refuses only read-write opens:
  ``qemu-img info`` shows such an image, and :attr:`ParallelsImage.dirty`
  says so.  A format extension (``ext_off``, in sectors) is read on a
  read-only open: its cluster must start with the extension magic and an
  MD5 checksum of the rest of the cluster, then features until the end
  marker; an unknown feature refuses the image.  (Dirty bitmap features are
  accepted here without checking their contents.)

``qemu-img info`` prints neither ``cluster-size`` nor ``dirty-flag``
(parallels has no ``bdrv_get_info``).  Pure: see ``formats._base``.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

from construct import Bytes, Int32ul, Int64ul, Struct

from imgchain.errors import FormatError, UnsupportedFeatureError

from ._base import Window, as_window, has_none_of, unpack
from ._qemuread import SECTOR, read_padded, readable

NAME = "parallels"
HEADER_MAGIC = b"WithoutFreeSpace"
HEADER_MAGIC2 = b"WithouFreSpacExt"
HEADER_VERSION = 2
HEADER_INUSE_MAGIC = 0x746F6E59
INT32_MAX = (1 << 31) - 1
FORMAT_EXTENSION_MAGIC = 0xAB234CEF23DCEA87
END_OF_FEATURES_MAGIC = 0x0
DIRTY_BITMAP_FEATURE_MAGIC = 0x20385FAE252CB34A

PARALLELS_HEADER = Struct(
    "magic" / Bytes(16),  # 0
    "version" / Int32ul,  # 16
    "heads" / Int32ul,  # 20
    "cylinders" / Int32ul,  # 24
    "tracks" / Int32ul,  # 28, sectors per cluster
    "bat_entries" / Int32ul,  # 32
    "nb_sectors" / Int64ul,  # 36
    "inuse" / Int32ul,  # 44
    "data_off" / Int32ul,  # 48, sectors
    "flags" / Int32ul,  # 52
    "ext_off" / Int64ul,  # 56, sectors
)
"""The image header (parallels.txt), 64 bytes."""

FORMAT_EXTENSION_HEADER = Struct("magic" / Int64ul, "check_sum" / Bytes(16))
FEATURE_HEADER = Struct("magic" / Int64ul, "flags" / Int64ul, "data_size" / Int32ul, "unused32" / Int32ul)

HEADER_SIZE = PARALLELS_HEADER.sizeof()
OFFSETS = {"magic": 0, "version": 16, "tracks": 28, "bat_entries": 32, "nb_sectors": 36, "inuse": 44, "ext_off": 56}


class ParallelsHeader(NamedTuple):
    magic: bytes
    version: int
    heads: int
    cylinders: int
    tracks: int
    bat_entries: int
    nb_sectors: int
    inuse: int
    data_off: int
    flags: int
    ext_off: int


@has_none_of("cluster_size", "backing_filename", "backing_format", "corrupt", "encrypted", "data_file", "references")
class ParallelsImage(NamedTuple):
    header: ParallelsHeader
    features: tuple[int, ...]  #: magics of the format extension's features (end marker excluded)

    @property
    def format(self) -> str:
        return NAME

    @property
    def virtual_size(self) -> int:
        sectors = self.header.nb_sectors
        if self.header.magic == HEADER_MAGIC:
            sectors &= 0xFFFFFFFF
        return sectors * SECTOR

    @property
    def cluster_bytes(self) -> int:
        return self.header.tracks * SECTOR

    @property
    def info_dirty_flag(self) -> None:
        return None

    @property
    def dirty(self) -> bool:
        """The ``inuse`` mark: the image was not closed cleanly."""
        return self.header.inuse == HEADER_INUSE_MAGIC


def probe(buf: bytes, filename: str | None = None) -> int:
    """qemu's ``parallels_probe``: 100 for either magic with version 2."""
    if buf[:16] not in (HEADER_MAGIC, HEADER_MAGIC2):
        return 0
    return 100 if int.from_bytes(buf[16:20].ljust(4, b"\0"), "little") == HEADER_VERSION else 0


def sniff(buf: bytes) -> bool:
    return probe(buf) > 0


def _bad(reason: str, field: str, value: object = None) -> FormatError:
    return FormatError(NAME, reason, field=field, offset=OFFSETS[field], value=value)


def _format_extension(win: Window, offset: int, cluster: int) -> tuple[int, ...]:
    if not readable(offset, cluster):
        raise _bad(f"ext_off {offset // SECTOR} beyond what qemu can read", "ext_off", offset // SECTOR)
    buf = read_padded(win, offset, cluster, NAME, "format extension", ahead=cluster)
    magic, check_sum = unpack(FORMAT_EXTENSION_HEADER, buf[:24], NAME, "format extension", offset)
    if magic != FORMAT_EXTENSION_MAGIC:
        raise FormatError(
            NAME, f"wrong Format Extension magic {magic:#x}", field="format extension magic", offset=offset
        )
    if hashlib.md5(buf[24:]).digest() != check_sum:
        raise FormatError(
            NAME, "wrong checksum in Format Extension header: it is corrupted", field="check_sum", offset=offset + 8
        )
    features: list[int] = []
    pos = 24
    while True:
        if pos + 24 > cluster:
            raise FormatError(NAME, "Format Extension out of cluster", field="feature", offset=offset + pos)
        fmagic, _flags, size, _unused = unpack(FEATURE_HEADER, buf[pos : pos + 24], NAME, "feature", offset + pos)
        pos += 24
        if size > cluster - pos:
            raise FormatError(NAME, "feature data out of cluster", field="data_size", offset=offset + pos - 8)
        if fmagic == END_OF_FEATURES_MAGIC:
            return tuple(features)
        if fmagic != DIRTY_BITMAP_FEATURE_MAGIC:
            raise UnsupportedFeatureError(
                NAME, f"unknown feature {fmagic:#x}", field="feature", offset=offset + pos - 24
            )
        features.append(fmagic)
        pos += size


def decode(data: bytes | Window) -> ParallelsImage:
    """Decode and check a parallels header as qemu 7.2 opens it read-only."""
    win = as_window(data)
    raw = read_padded(win, 0, HEADER_SIZE, NAME, "header")
    h = ParallelsHeader._make(unpack(PARALLELS_HEADER, raw, NAME, "header", 0))
    if h.version != HEADER_VERSION:
        raise UnsupportedFeatureError(NAME, f"version {h.version} unsupported (only 2)", field="version", offset=16)
    if h.magic not in (HEADER_MAGIC, HEADER_MAGIC2):
        raise _bad(f"bad magic {h.magic!r}", "magic", h.magic)
    if h.tracks == 0:
        raise _bad("invalid image: zero sectors per track", "tracks", 0)
    if h.tracks > INT32_MAX // 513:
        raise _bad(f"invalid image: too big cluster ({h.tracks} sectors)", "tracks", h.tracks)
    if h.bat_entries > INT32_MAX // 4:
        raise _bad(f"catalog too large ({h.bat_entries} entries)", "bat_entries", h.bat_entries)
    features: tuple[int, ...] = ()
    if h.ext_off:
        features = _format_extension(win, h.ext_off * SECTOR, h.tracks * SECTOR)
    return ParallelsImage(h, features)
