"""Polyglots: another format's signature inside an image's header range.

A polyglot is a file that is a valid image and also carries another
format's signature where another reader looks for it: a qcow2 header written
over the start of an ISO 9660 image, whose volume descriptors at byte 0x8000
are still intact, opens in qemu as qcow2 while firmware and ISO tools see an
ISO.  :func:`foreign_signatures` finds such signatures.  It is pure: it looks
at the file through a :class:`~imgchain.formats.Window` (see ``_base``).

Where it looks, and why there only
----------------------------------
Only inside ``[0, header_end)``, the bytes the image format keeps for its
header and never gives to guest data (:func:`header_end_of`):

* qcow2: the whole first cluster, ``cluster_size`` bytes.  It holds the
  header, its extensions and the backing file name; its refcount is never 0
  and qemu's overlap checks (``QCOW2_OL_MAIN_HEADER``) keep guest data out.
* QED: the header clusters, ``header_size * cluster_size`` bytes
  (qed_spec.txt: the L1 table and all data lie after them).
* raw, and any other format: nothing.  A raw disk with a partition table or
  an ISO inside is a normal disk.

Beyond the header range lie qemu's tables and guest data, placed by qemu.
A signature there is what the guest wrote, and ``qemu-img convert`` of an
honest disk can put one exactly where another reader looks: converting an
ISO whose 16-sector system area holds 12 KiB of boot code with
``-o cluster_size=4096`` puts its primary volume descriptor at file offset
0x8000 (tests/test_polyglot.py builds it).  OpenStack's format_inspector
refuses that image ("Multiple formats detected"); we do not look there.

What is looked for (all offsets are file offsets):

=========  =====================================  ============================
format     signature                              where
=========  =====================================  ============================
vdi        0xbeda107f, little-endian              0x40 (qemu's vdi probe)
mbr        boot signature 0x55 0xAA               510 (MBR or boot sector)
gpt        ``EFI PART``                           LBA 1 for 512-, 1024-, 2048-
                                                  and 4096-byte sectors (512,
                                                  1024, 2048, 4096)
iso9660    ``CD001`` at byte 1 of a sector;       each 2048-byte sector 16..99
           High Sierra ``CDROM`` at byte 9        (0x8000..0x32000)
udf        ``BEA01`` ``NSR02`` ``NSR03``          the same sectors
           ``TEA01`` ``BOOT2`` ``CDW02``
=========  =====================================  ============================

Sectors 16 to 99 are where Linux's isofs looks for a primary volume
descriptor (it skips sectors it does not recognise up to sector 100); UDF's
volume recognition sequence starts at byte 32768 too, in 2048-byte steps or
steps of the UDF block size (4096: every other slot).  ``qemu-img`` never
writes any of these bytes: in the header range of every image it makes they
are zero or part of a name.  A name that is valid UTF-8 cannot hold 0x55 0xAA
(0xAA is a continuation byte and cannot follow an ASCII byte) or
0xbeda107f; ``EFI PART`` or ``CD001`` at exactly these offsets of a name is
no accident either.

Reads
-----
Everything below 4096 (:data:`FIRST_READ`, the probe's first read) comes
from the first chunk.  Above it, two ranges at most are read: the 8 bytes
of a GPT header at 4096 (for a header range past 4104 bytes), and for a
header range past sector 16, its sectors from 16 on, ``[0x8000,
min(header_end, 0x32000, file size))`` (a default, 64 KiB cluster image:
``[0x8000, 0x10000)``).  The bytes between are looked at by no reader, and
not read: for a 64 KiB cluster that is 28 KiB less per image than one read
from 4096 on, about 2.5 µs.  Nothing past the header range or the file is
asked for.

qemu 7.2 and the VDI signature
------------------------------
qemu probes a qcow2 whose ``snapshots_offset`` is 0x7f10dabe00000000 (no
snapshots: a valid qcow2) as VDI, not qcow2: both probes score 100 and the
VDI driver is asked first.  A QED with the signature at 0x40 probes as QED.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from imgchain.errors import TruncatedError

from . import qcow2, qed
from ._base import DecodedImage, Window

__all__ = [
    "FIRST_READ",
    "SCAN_END",
    "Signature",
    "foreign_signatures",
    "header_end_of",
    "signatures",
    "signatures_in",
    "spans",
]


class Signature(NamedTuple):
    """A foreign format's signature found inside an image's header range."""

    #: "iso9660", "udf", "gpt", "mbr" or "vdi".
    format: str
    #: File offset of the signature's bytes (0x8001 for ``CD001`` in sector 16).
    offset: int
    #: What it is, for a message: "ISO 9660 primary volume descriptor (version 1)".
    what: str


#: The bytes the probe reads first (``imgchain.probe.INITIAL_READ``):
#: everything below is taken from the window's first chunk.
FIRST_READ = 4096

SECTOR = 2048
FIRST_DESCRIPTOR = 16 * SECTOR  # 0x8000: ISO 9660 and UDF both start here
#: One past the last byte looked at: Linux isofs looks at sectors 16..99.
SCAN_END = 100 * SECTOR  # 0x32000

VDI_OFFSET, VDI_MAGIC = 0x40, b"\x7f\x10\xda\xbe"
MBR_OFFSET, MBR_MAGIC = 510, b"\x55\xaa"
MBR_PARTITIONS = 446
GPT_MAGIC = b"EFI PART"
#: LBA 1 for each logical sector size a disk (or a loop device) may have.
GPT_SECTOR_SIZES = (512, 1024, 2048, 4096)

ISO_TYPES = {0: "boot record", 1: "primary", 2: "supplementary", 3: "volume partition", 255: "set terminator"}
#: ECMA-167 volume recognition sequence (and ECMA-168's CDW02), as Linux's udf reads it.
UDF_IDENTIFIERS = {
    b"BEA01": "beginning extended area descriptor",
    b"NSR02": "NSR02 descriptor (UDF up to 1.50)",
    b"NSR03": "NSR03 descriptor (UDF 2.00 and later)",
    b"TEA01": "terminating extended area descriptor",
    b"BOOT2": "boot descriptor",
    b"CDW02": "CDW02 descriptor (ECMA-168)",
}
_MIN_END = VDI_OFFSET + len(VDI_MAGIC)  # below this there is nothing to look at


def header_end_of(image: DecodedImage) -> int:
    """The end of the byte range that ``image``'s format keeps for its header
    and never uses for guest data; 0 for raw and formats without one."""
    if isinstance(image, qcow2.Qcow2Image):
        return image.cluster_size
    if isinstance(image, qed.QedImage):
        return image.header.header_size * image.header.cluster_size
    return 0


def foreign_signatures(win: Window, fmt: str, header_end: int) -> tuple[Signature, ...]:
    """Every other format's signature found inside ``[0, header_end)`` of an
    image of format ``fmt``, at a place where that format's readers look.

    ``header_end`` comes from :func:`header_end_of`.  Signatures of ``fmt``
    itself are its own header, not foreign.  Raises
    :class:`~imgchain.formats.NeedBytes` (at most twice: for the ranges
    :func:`spans` names) when the window lacks bytes the file holds; never
    reads past the file's end, so a truncated file gives what its bytes show
    and no error."""
    end = min(header_end, win.size)
    if fmt == "raw" or end < _MIN_END:
        return ()
    low = win.get(0, min(end, FIRST_READ), fmt, "polyglot signatures")
    gpt, descriptors = (
        win.get(offset, length, fmt, "polyglot signatures") if length else b"" for offset, length in spans(end)
    )
    return signatures_in(low, gpt, descriptors, fmt)


def signatures(
    image: DecodedImage, first: bytes, size: int, read: Callable[[int, int], bytes]
) -> tuple[Signature, ...]:
    """The probe's one call: the ranges :func:`spans` names, read with
    ``read(length, offset)`` (the probe's bounded reader; none for an empty
    range), and :func:`signatures_in`."""
    header_end = header_end_of(image)
    if header_end < _MIN_END or size < _MIN_END:
        return ()
    (gpt_at, gpt_length), (sectors_at, sectors_length) = spans(min(header_end, size))
    fmt = image.format
    gpt = _read_exactly(read, gpt_at, gpt_length, fmt) if gpt_length else b""
    descriptors = _read_exactly(read, sectors_at, sectors_length, fmt) if sectors_length else b""
    return signatures_in(first, gpt, descriptors, fmt, header_end)


def _read_exactly(read: Callable[[int, int], bytes], offset: int, length: int, fmt: str) -> bytes:
    data = read(length, offset)
    if len(data) < length:  # the file shrank under us
        raise TruncatedError(fmt, f"short read at {offset}", offset=offset)
    return data


def spans(end: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The two ranges beyond the first :data:`FIRST_READ` bytes that the scan
    of a header range ending at ``end`` (already cut to the file's size)
    looks at, as (offset, length), length 0 where there is none: the 8 bytes
    of a GPT header at 4096, and the sectors from 16 on, up to
    :data:`SCAN_END`.  (The bytes between are not read: nothing is looked
    for there.)"""
    gpt = (FIRST_READ, len(GPT_MAGIC)) if end >= FIRST_READ + len(GPT_MAGIC) else (FIRST_READ, 0)
    sectors = (FIRST_DESCRIPTOR, min(end, SCAN_END) - FIRST_DESCRIPTOR) if end > FIRST_DESCRIPTOR else (0, 0)
    return gpt, sectors


def signatures_in(
    low: bytes, gpt: bytes, descriptors: bytes, fmt: str, header_end: int | None = None
) -> tuple[Signature, ...]:
    """The scan itself, on the header range's first :data:`FIRST_READ` bytes
    (``low``; or the file's first bytes, and ``header_end``), the 8 bytes at
    4096 (``gpt``, or b"") and the sectors from 16 on (``descriptors``,
    from file offset :data:`FIRST_DESCRIPTOR`, or b""): see :func:`spans`."""
    if header_end is not None and header_end < len(low):
        low = low[:header_end]
    # The usual case, in a few C calls: no signature where it would be.
    if not (
        low.startswith(VDI_MAGIC, VDI_OFFSET)
        or low.startswith(MBR_MAGIC, MBR_OFFSET)
        or low.startswith(GPT_MAGIC, 512)
        or low.startswith(GPT_MAGIC, 1024)
        or low.startswith(GPT_MAGIC, 2048)
        or gpt == GPT_MAGIC
    ):
        if not descriptors:
            return ()
        found = _descriptors(descriptors)  # (itself quick where there are none)
        return tuple(s for s in found if s.format != fmt) if found else ()
    found = []
    if low.startswith(VDI_MAGIC, VDI_OFFSET):
        found.append(Signature("vdi", VDI_OFFSET, "VDI signature 0xbeda107f (qemu probes it with score 100)"))
    if low.startswith(MBR_MAGIC, MBR_OFFSET):
        found.append(Signature("mbr", MBR_OFFSET, _mbr(low)))
    for sector in GPT_SECTOR_SIZES:
        if (gpt == GPT_MAGIC) if sector == FIRST_READ else low.startswith(GPT_MAGIC, sector):
            found.append(Signature("gpt", sector, f"GPT header at LBA 1 of {sector}-byte sectors"))
    found.extend(_descriptors(descriptors))
    return tuple(s for s in found if s.format != fmt)


def _mbr(sector0: bytes) -> str:
    types = [sector0[MBR_PARTITIONS + 16 * i + 4] for i in range(4)]  # the 512 bytes are there
    used = ", ".join(f"{t:#04x}" for t in types if t)
    if 0xEE in types:
        return f"MBR boot signature 0x55AA with a protective GPT partition (types {used})"
    return f"MBR boot signature 0x55AA (partition types {used or 'none'})"


def _descriptors(sectors: bytes) -> list[Signature]:
    """ISO 9660, High Sierra and UDF descriptors in the 2048-byte sectors
    from 16 on (``sectors`` starts at file offset FIRST_DESCRIPTOR)."""
    # The usual case: the header range is zero there; one look at the byte
    # each signature starts with, in every sector, says so.
    if not (sectors[1::SECTOR].strip(b"\0") or sectors[9::SECTOR].strip(b"\0")):
        return []
    found = []
    for pos in range(0, len(sectors), SECTOR):
        offset = FIRST_DESCRIPTOR + pos
        ident = sectors[pos + 1 : pos + 6]
        if ident == b"CD001":
            kind, version = sectors[pos], sectors[pos + 6 : pos + 7]
            name = ISO_TYPES.get(kind, f"type {kind}")
            ver = f"version {version[0]}" if version else "version missing"
            found.append(Signature("iso9660", offset + 1, f"ISO 9660 {name} volume descriptor ({ver})"))
        elif ident in UDF_IDENTIFIERS:
            found.append(Signature("udf", offset + 1, f"UDF volume recognition: {UDF_IDENTIFIERS[ident]}"))
        elif sectors[pos + 9 : pos + 14] == b"CDROM":
            found.append(Signature("iso9660", offset + 9, "High Sierra volume descriptor (CDROM)"))
    return found
