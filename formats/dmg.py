"""dmg: Apple's UDIF disk image, as qemu 7.2's ``block/dmg.c`` opens it
(read-only).

qemu has no spec for it; the layout is the UDIF trailer (``koly``, 512
bytes, big-endian, field names from Apple's ``UDIFResourceFile``) and the
``mish`` block tables that qemu reads.  The rules are qemu 7.2's:

* **Probe** (``dmg_probe``): by **file name**, not content: **2** when the
  name qemu was given is longer than 4 characters and ends in ``.dmg``
  (``.dmg`` alone is raw).  So a raw disk named ``x.dmg`` is a dmg to qemu,
  which then refuses it.  A cloop file (also 2) named ``*.dmg`` is a dmg:
  dmg comes first in qemu's driver list.
* **Trailer** (``dmg_find_koly_offset``): the file must be at least 512
  bytes; ``koly`` is searched for in the last 515 bytes of the file's length
  rounded up to 512 (zeros past the true end): the first match is the
  trailer.  Then ``DataForkOffset`` at most the trailer's offset;
  ``RsrcForkOffset``/``RsrcForkLength`` and ``XMLOffset``/``XMLLength``
  inside the file before the trailer; ``SectorCount`` (the virtual size, in
  sectors) not negative as an int64.
* **Block tables**: from the resource fork when its length is non-zero,
  else from the XML property list (at most 16 MiB; each ``<data>`` element
  base64-decoded), else the image is refused.  Each ``mish`` block of at
  least 244 bytes is read; chunks of a type qemu knows (zero, raw, ignore,
  zlib; bzip2 and lzfse only when qemu's ``dmg-bz2``/``dmg-lzfse`` modules
  are installed, which they are not on this Debian build: see
  :data:`KNOWN_CHUNK_TYPES`) may cover at most 64 MiB compressed and
  131072 sectors uncompressed (zero and ignore chunks are unbounded).

``qemu-img info`` prints neither ``cluster-size`` nor ``dirty-flag``.
Pure: see ``formats._base``.
"""

from __future__ import annotations

import binascii
import re
from typing import NamedTuple

from construct import Bytes, Int32ub, Int64ub, Struct

from imgchain.errors import FormatError, TruncatedError

from ._base import Window, as_window, has_none_of, unpack
from ._qemuread import SECTOR, qemu_length, read_padded, readable

NAME = "dmg"
PROBE_SCORE = 2
KOLY = b"koly"
MISH = 0x6D697368
TRAILER_SIZE = 512
MAX_XML_LENGTH = 16 * 1024 * 1024
DMG_LENGTHS_MAX = 64 * 1024 * 1024
DMG_SECTORCOUNTS_MAX = DMG_LENGTHS_MAX // SECTOR
MISH_MIN = 244
MISH_CHUNKS_AT = 204
CHUNK_SIZE = 40

UDZE, UDRW, UDIG = 0, 1, 2
UDCO, UDZO, UDBZ, ULFO = 0x80000004, 0x80000005, 0x80000006, 0x80000007
#: The chunk types qemu 7.2 reads, as built here (no dmg-bz2, no dmg-lzfse module).
KNOWN_CHUNK_TYPES = (UDZE, UDRW, UDIG, UDZO)
UNBOUNDED_TYPES = (UDZE, UDIG)

KOLY_TRAILER = Struct(
    "signature" / Bytes(4),  # 0x00, "koly"
    "version" / Int32ub,  # 0x04
    "header_size" / Int32ub,  # 0x08
    "flags" / Int32ub,  # 0x0c
    "running_data_fork_offset" / Int64ub,  # 0x10
    "data_fork_offset" / Int64ub,  # 0x18
    "data_fork_length" / Int64ub,  # 0x20
    "rsrc_fork_offset" / Int64ub,  # 0x28
    "rsrc_fork_length" / Int64ub,  # 0x30
    "segment_number" / Int32ub,  # 0x38
    "segment_count" / Int32ub,  # 0x3c
    "segment_id" / Bytes(16),  # 0x40
    "data_checksum" / Bytes(136),  # 0x50, type, size, 32 words
    "xml_offset" / Int64ub,  # 0xd8
    "xml_length" / Int64ub,  # 0xe0
    "reserved1" / Bytes(120),  # 0xe8
    "master_checksum" / Bytes(136),  # 0x160
    "image_variant" / Int32ub,  # 0x1e8
    "sector_count" / Int64ub,  # 0x1ec
    "reserved2" / Bytes(12),  # 0x1f4
)
"""The UDIF trailer (``UDIFResourceFile``), 512 bytes."""

MISH_HEADER = Struct(
    "signature" / Int32ub,  # 0, "mish"
    "version" / Int32ub,  # 4
    "sector_number" / Int64ub,  # 8: chunk sectors are relative to it
    "sector_count" / Int64ub,  # 16
    "data_offset" / Int64ub,  # 24: chunk offsets are relative to it (and the data fork)
)
"""The start of a ``mish`` block (``BLKXTable``); chunks start at 204."""

BLKX_CHUNK = Struct(
    "entry_type" / Int32ub,
    "comment" / Int32ub,
    "sector_number" / Int64ub,
    "sector_count" / Int64ub,
    "compressed_offset" / Int64ub,
    "compressed_length" / Int64ub,
)
"""One chunk entry (``BLKXChunkEntry``), 40 bytes."""

KOLY_OFFSETS = {
    "data_fork_offset": 0x18,
    "rsrc_fork_offset": 0x28,
    "rsrc_fork_length": 0x30,
    "xml_offset": 0xD8,
    "xml_length": 0xE0,
    "sector_count": 0x1EC,
}


class KolyTrailer(NamedTuple):
    signature: bytes
    version: int
    header_size: int
    flags: int
    running_data_fork_offset: int
    data_fork_offset: int
    data_fork_length: int
    rsrc_fork_offset: int
    rsrc_fork_length: int
    segment_number: int
    segment_count: int
    segment_id: bytes
    data_checksum: bytes
    xml_offset: int
    xml_length: int
    reserved1: bytes
    master_checksum: bytes
    image_variant: int
    sector_count: int
    reserved2: bytes


@has_none_of(
    "cluster_size", "backing_filename", "backing_format", "dirty", "corrupt", "encrypted", "data_file", "references"
)
class DmgImage(NamedTuple):
    trailer: KolyTrailer
    trailer_offset: int
    n_chunks: int  #: chunks of known types
    tables_from: str  #: "resource fork" or "xml"

    @property
    def format(self) -> str:
        return NAME

    @property
    def virtual_size(self) -> int:
        return self.trailer.sector_count * SECTOR

    @property
    def info_dirty_flag(self) -> None:
        return None


def probe(buf: bytes, filename: str | None = None) -> int:
    """qemu's ``dmg_probe``: 2 for a file name longer than 4 characters
    ending in ``.dmg``, whatever the content.  (qemu probes an empty file as
    raw before asking any driver: the caller sees to that.)"""
    if filename is None:
        return 0
    return PROBE_SCORE if len(filename.encode("utf-8", "surrogateescape")) > 4 and filename.endswith(".dmg") else 0


def sniff(buf: bytes) -> bool:
    """Content alone never makes a dmg: see :func:`probe`."""
    return False


def _bad(reason: str, field: str, offset: int, value: object = None) -> FormatError:
    return FormatError(NAME, reason, field=field, offset=offset, value=value)


def find_koly(win: Window) -> int:
    """Where qemu finds the trailer (``dmg_find_koly_offset``)."""
    length = qemu_length(win)
    if length < TRAILER_SIZE:
        raise TruncatedError(NAME, "dmg file must be at least 512 bytes long", field="koly", offset=0)
    offset = length - 511 - 512 if length > 511 + 512 else 0
    span = min(length, 515)
    buf = read_padded(win, offset, span, NAME, "UDIF trailer")
    at = buf.find(KOLY)
    if at < 0:
        raise _bad("could not locate the UDIF trailer ('koly') in the dmg file", "koly", offset)
    return offset + at


def _mish(block: bytes, data_fork_offset: int, where: int) -> int:
    """Check one ``mish`` block as ``dmg_read_mish_block``; the number of
    chunks qemu keeps."""
    if len(block) < MISH_MIN or int.from_bytes(block[:4], "big") != MISH:
        return 0
    _sig, _ver, _out, _count, _data = unpack(MISH_HEADER, block[:32], NAME, "mish block", where)
    kept = 0
    for i in range((len(block) - MISH_CHUNKS_AT) // CHUNK_SIZE):
        at = MISH_CHUNKS_AT + i * CHUNK_SIZE
        kind, _c, _sector, count, _off, length = unpack(
            BLKX_CHUNK, block[at : at + CHUNK_SIZE], NAME, "mish chunk", where + at
        )
        if kind not in KNOWN_CHUNK_TYPES:
            continue
        if kind not in UNBOUNDED_TYPES and count > DMG_SECTORCOUNTS_MAX:
            raise _bad(
                f"sector count {count} of a chunk is larger than max ({DMG_SECTORCOUNTS_MAX})",
                "sector_count",
                where + at + 16,
            )
        if length > DMG_LENGTHS_MAX:
            raise _bad(
                f"length {length} of a chunk is larger than max ({DMG_LENGTHS_MAX})",
                "compressed_length",
                where + at + 32,
            )
        kept += 1
    return kept


def _resource_fork(win: Window, begin: int, length: int, data_fork: int) -> int:
    head = read_padded(win, begin, 12, NAME, "resource fork")
    data_offset = int.from_bytes(head[:4], "big")
    if data_offset > length:
        raise _bad(
            f"resource data offset {data_offset} past the fork's {length} bytes", "rsrc_fork", begin, data_offset
        )
    count = int.from_bytes(head[8:12], "big")
    if count == 0 or data_offset + count > length:
        raise _bad(f"resource data length {count} does not fit the fork", "rsrc_fork", begin + 8, count)
    offset = begin + data_offset
    end = offset + count
    chunks = 0
    while offset < end:
        size = int.from_bytes(read_padded(win, offset, 4, NAME, "resource"), "big")
        if size == 0 or size > end - offset:
            raise _bad(f"resource of {size} bytes does not fit the resource data", "resource", offset, size)
        offset += 4
        if not readable(offset, size):
            raise _bad("resource beyond what qemu can read", "resource", offset - 4, size)
        chunks += _mish(read_padded(win, offset, size, NAME, "mish block", ahead=size), data_fork, offset)
        offset += size
    return chunks


_B64 = re.compile(rb"[^A-Za-z0-9+/=]")


def _g_base64_decode(text: bytes) -> bytes:
    """glib's lenient base64 decoding, closely enough for the block tables:
    characters outside the alphabet are skipped, decoding stops at the first
    ``=``, and a last group of 2 or 3 characters still yields its bytes."""
    clean = _B64.sub(b"", text).split(b"=", 1)[0]
    whole = len(clean) - len(clean) % 4
    tail = clean[whole:]
    padded = clean[:whole] + (tail + b"=" * (4 - len(tail)) if len(tail) > 1 else b"")
    try:
        return binascii.a2b_base64(padded)
    except binascii.Error:  # pragma: no cover - the input is clean
        return b""


def _plist(win: Window, begin: int, length: int, data_fork: int) -> int:
    if length == 0 or length > MAX_XML_LENGTH:
        raise _bad(f"XML property list of {length} bytes (at most {MAX_XML_LENGTH})", "xml_length", begin, length)
    text = read_padded(win, begin, length, NAME, "XML property list", ahead=length)
    text = text.split(b"\0", 1)[0]  # qemu scans it as a C string
    chunks = 0
    pos = 0
    while True:
        start = text.find(b"<data>", pos)
        if start < 0:
            return chunks
        start += 6
        end = text.find(b"</data>", start)
        if end < 0:
            raise _bad("malformed XML: <data> without </data>", "xml", begin + start)
        chunks += _mish(_g_base64_decode(text[start:end]), data_fork, begin + start)
        pos = end + 7


def decode(data: bytes | Window) -> DmgImage:
    """Decode and check a dmg image with qemu 7.2's ``dmg_open`` rules."""
    win = as_window(data)
    koly = find_koly(win)
    raw = read_padded(win, koly, TRAILER_SIZE, NAME, "UDIF trailer")
    t = KolyTrailer._make(unpack(KOLY_TRAILER, raw, NAME, "UDIF trailer", koly))
    if t.data_fork_offset > koly:
        raise _bad("DataForkOffset past the trailer", "data_fork_offset", koly + 0x18, t.data_fork_offset)
    if t.rsrc_fork_offset >= koly or t.rsrc_fork_length > koly - t.rsrc_fork_offset:
        raise _bad("resource fork not before the trailer", "rsrc_fork_offset", koly + 0x28, t.rsrc_fork_offset)
    if t.xml_offset >= koly or t.xml_length > koly - t.xml_offset:
        raise _bad("XML property list not before the trailer", "xml_offset", koly + 0xD8, t.xml_offset)
    if t.sector_count >= 1 << 63:
        raise _bad("negative SectorCount", "sector_count", koly + 0x1EC, t.sector_count)
    if t.rsrc_fork_length:
        chunks, source = (
            _resource_fork(win, t.rsrc_fork_offset, t.rsrc_fork_length, t.data_fork_offset),
            "resource fork",
        )
    elif t.xml_length:
        chunks, source = _plist(win, t.xml_offset, t.xml_length, t.data_fork_offset), "xml"
    else:
        raise _bad("neither a resource fork nor an XML property list", "rsrc_fork_length", koly + 0x30, 0)
    return DmgImage(t, koly, chunks, source)
