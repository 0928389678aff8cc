"""vdi: VirtualBox's disk image, as qemu 7.2's ``block/vdi.c`` opens it.

The header is qemu's ``VdiHeader`` (VirtualBox's ``VDIHEADER1PLUS`` behind
its 64-byte text preamble), little-endian, 512 bytes; field names are
qemu's.  The rules are qemu 7.2's ``vdi_probe`` and ``vdi_open``:

* **Probe**: 100 when the signature ``0xbeda107f`` is at 0x40 (qemu probes a
  512-byte buffer, zero-filled past the end of a short file).
* **Refusals**, in qemu's order: a disk size over ``VDI_DISK_SIZE_MAX``; a
  bad signature; a version other than 1.1; a block map or data offset not
  on a sector boundary; a sector size other than 512; a block size other
  than 1 MiB; a disk larger than its block map covers; a non-null link
  UUID; a **non-null parent UUID**; more than ``VDI_BLOCKS_IN_IMAGE_MAX``
  blocks.  A disk size that is not a whole number of sectors is rounded up.
* The image type (1 dynamic, 2 static) is not checked.

**Differencing images** name their parent by UUID only (``uuid_parent``),
never by file name: VirtualBox finds the parent in its media registry.  So
a VDI names no file (:attr:`VdiImage.references` is empty) and qemu
refuses a differencing VDI outright.

``qemu-img info`` prints ``cluster-size`` (the block size) and
``dirty-flag: false``; no format-specific data.  Pure: see ``formats._base``.
"""

from __future__ import annotations

import uuid
from typing import NamedTuple

from construct import Bytes, Int32ul, Int64ul, Struct

from imgchain.errors import FormatError, UnsupportedFeatureError

from ._base import Window, as_window, has_none_of, unpack
from ._qemuread import SECTOR, read_padded

NAME = "vdi"
SIGNATURE = 0xBEDA107F
SIGNATURE_OFFSET = 0x40
VERSION_1_1 = 0x00010001
IMAGE_TYPE_DYNAMIC, IMAGE_TYPE_STATIC = 1, 2
IMAGE_TYPE_NAMES = {IMAGE_TYPE_DYNAMIC: "dynamic", IMAGE_TYPE_STATIC: "static"}
DEFAULT_CLUSTER_SIZE = 1 << 20
#: qemu's VDI_BLOCKS_IN_IMAGE_MAX: a block map of at most INT_MAX bytes, rounded to sectors.
BLOCKS_IN_IMAGE_MAX = ((1 << 31) - SECTOR) // 4
DISK_SIZE_MAX = BLOCKS_IN_IMAGE_MAX * DEFAULT_CLUSTER_SIZE

VDI_HEADER = Struct(
    "text" / Bytes(0x40),  # 0, "<<< QEMU VM Virtual Disk Image >>>\n"
    "signature" / Int32ul,  # 0x40
    "version" / Int32ul,  # 0x44
    "header_size" / Int32ul,  # 0x48
    "image_type" / Int32ul,  # 0x4c
    "image_flags" / Int32ul,  # 0x50
    "description" / Bytes(256),  # 0x54
    "offset_bmap" / Int32ul,  # 0x154
    "offset_data" / Int32ul,  # 0x158
    "cylinders" / Int32ul,  # 0x15c
    "heads" / Int32ul,  # 0x160
    "sectors" / Int32ul,  # 0x164
    "sector_size" / Int32ul,  # 0x168
    "unused1" / Int32ul,  # 0x16c
    "disk_size" / Int64ul,  # 0x170
    "block_size" / Int32ul,  # 0x178
    "block_extra" / Int32ul,  # 0x17c
    "blocks_in_image" / Int32ul,  # 0x180
    "blocks_allocated" / Int32ul,  # 0x184
    "uuid_image" / Bytes(16),  # 0x188
    "uuid_last_snap" / Bytes(16),  # 0x198
    "uuid_link" / Bytes(16),  # 0x1a8
    "uuid_parent" / Bytes(16),  # 0x1b8
    "unused2" / Bytes(56),  # 0x1c8
)
"""qemu's ``VdiHeader`` (512 bytes)."""

HEADER_SIZE = VDI_HEADER.sizeof()

OFFSETS = {
    "signature": 0x40,
    "version": 0x44,
    "image_type": 0x4C,
    "offset_bmap": 0x154,
    "offset_data": 0x158,
    "sector_size": 0x168,
    "disk_size": 0x170,
    "block_size": 0x178,
    "blocks_in_image": 0x180,
    "uuid_link": 0x1A8,
    "uuid_parent": 0x1B8,
}
_NULL_UUID = bytes(16)


class VdiHeader(NamedTuple):
    text: bytes
    signature: int
    version: int
    header_size: int
    image_type: int
    image_flags: int
    description: bytes
    offset_bmap: int
    offset_data: int
    cylinders: int
    heads: int
    sectors: int
    sector_size: int
    unused1: int
    disk_size: int
    block_size: int
    block_extra: int
    blocks_in_image: int
    blocks_allocated: int
    uuid_image: bytes
    uuid_last_snap: bytes
    uuid_link: bytes
    uuid_parent: bytes
    unused2: bytes


def uuid_text(raw: bytes) -> str:
    """A VDI UUID (stored as RTCUUID, little-endian fields) as text."""
    return str(uuid.UUID(bytes_le=raw))


@has_none_of("backing_filename", "backing_format", "dirty", "corrupt", "encrypted", "data_file", "references")
class VdiImage(NamedTuple):
    header: VdiHeader

    @property
    def format(self) -> str:
        return NAME

    @property
    def virtual_size(self) -> int:
        """The disk size rounded up to whole sectors, as qemu does."""
        return (self.header.disk_size + SECTOR - 1) // SECTOR * SECTOR

    @property
    def cluster_size(self) -> int:
        return self.header.block_size

    @property
    def image_type(self) -> str:
        """``dynamic``, ``static``, or the number when neither."""
        return IMAGE_TYPE_NAMES.get(self.header.image_type, str(self.header.image_type))

    @property
    def info_dirty_flag(self) -> bool | None:
        return False

    @property
    def parent_uuid(self) -> str | None:
        """Always None here: qemu refuses a differencing VDI."""
        return None if self.header.uuid_parent == _NULL_UUID else uuid_text(self.header.uuid_parent)


def probe(buf: bytes, filename: str | None = None) -> int:
    """qemu's ``vdi_probe``: 100 for the signature at 0x40."""
    return 100 if int.from_bytes(buf[0x40:0x44].ljust(4, b"\0"), "little") == SIGNATURE else 0


def sniff(buf: bytes) -> bool:
    return probe(buf) > 0


def _unsupported(reason: str, field: str, value: object = None) -> UnsupportedFeatureError:
    return UnsupportedFeatureError(NAME, reason, field=field, offset=OFFSETS[field], value=value)


def decode(data: bytes | Window) -> VdiImage:
    """Decode and check a VDI header with qemu 7.2's ``vdi_open`` rules."""
    win = as_window(data)
    raw = read_padded(win, 0, HEADER_SIZE, NAME, "header")
    h = VdiHeader._make(unpack(VDI_HEADER, raw, NAME, "header", 0))
    if h.disk_size > DISK_SIZE_MAX:
        raise _unsupported(
            f"disk_size {h.disk_size:#x} too large (at most {DISK_SIZE_MAX:#x})", "disk_size", h.disk_size
        )
    disk_size = (h.disk_size + SECTOR - 1) // SECTOR * SECTOR
    if h.signature != SIGNATURE:
        raise FormatError(
            NAME,
            f"bad signature {h.signature:#010x}",
            field="signature",
            offset=OFFSETS["signature"],
            value=h.signature,
        )
    if h.version != VERSION_1_1:
        raise _unsupported(
            f"version {h.version >> 16}.{h.version & 0xFFFF} unsupported (only 1.1)", "version", h.version
        )
    if h.offset_bmap % SECTOR:
        raise _unsupported(
            f"block map offset {h.offset_bmap:#x} not on a sector boundary", "offset_bmap", h.offset_bmap
        )
    if h.offset_data % SECTOR:
        raise _unsupported(f"data offset {h.offset_data:#x} not on a sector boundary", "offset_data", h.offset_data)
    if h.sector_size != SECTOR:
        raise _unsupported(f"sector size {h.sector_size} is not {SECTOR}", "sector_size", h.sector_size)
    if h.block_size != DEFAULT_CLUSTER_SIZE:
        raise _unsupported(f"block size {h.block_size} is not {DEFAULT_CLUSTER_SIZE}", "block_size", h.block_size)
    if disk_size > h.blocks_in_image * h.block_size:
        raise _unsupported(
            f"disk size {disk_size}, but the block map has room for {h.blocks_in_image * h.block_size}",
            "disk_size",
            disk_size,
        )
    if h.uuid_link != _NULL_UUID:
        raise _unsupported("non-null link UUID", "uuid_link", uuid_text(h.uuid_link))
    if h.uuid_parent != _NULL_UUID:
        raise _unsupported(
            f"non-null parent UUID {uuid_text(h.uuid_parent)} (a differencing image)",
            "uuid_parent",
            uuid_text(h.uuid_parent),
        )
    if h.blocks_in_image > BLOCKS_IN_IMAGE_MAX:
        raise _unsupported(
            f"too many blocks {h.blocks_in_image}, max is {BLOCKS_IN_IMAGE_MAX}", "blocks_in_image", h.blocks_in_image
        )
    return VdiImage(h)
