"""Signatures of the image formats qemu knows but imgchain does not decode.

qemu would probe these files as their own format, not as raw.  Calling
such a file raw would be a lie (and, for a file declared raw, exactly the
disagreement a format-probing attack exploits), so the prober names the
format and refuses it.  Only the magic numbers of qemu's probe functions
are checked, and for ``dmg``, which qemu probes by name, the file name.
"""

from __future__ import annotations

__all__ = ["sniff_foreign"]


def _at(buf: bytes, offset: int, magic: bytes) -> bool:
    return buf[offset : offset + len(magic)] == magic


def sniff_foreign(buf: bytes, filename: str | None = None) -> str | None:
    """The name of the qemu format whose signature ``buf`` starts with, or
    None.  qemu takes any non-empty file whose name ends in ``.dmg`` for a
    dmg image (it has no magic at the start), so a ``filename`` counts too."""
    if _at(buf, 0, b"QFI\xfb") and int.from_bytes(buf[4:8], "big") == 1:
        return "qcow"
    if _at(buf, 0, b"KDMV") or _at(buf, 0, b"COWD") or _at(buf, 0, b"# Disk DescriptorFile"):
        return "vmdk"
    if _at(buf, 0, b"conectix"):
        return "vpc"
    if _at(buf, 0, b"vhdxfile"):
        return "vhdx"
    if _at(buf, 64, b"\x7f\x10\xda\xbe"):
        return "vdi"
    if _at(buf, 0, b"LUKS\xba\xbe\x00\x01"):
        return "luks"
    if (_at(buf, 0, b"WithoutFreeSpace") or _at(buf, 0, b"WithouFreSpacExt")) and int.from_bytes(
        buf[16:20], "little"
    ) == 2:
        return "parallels"
    if _at(buf, 0, b"Bochs Virtual HD Image\0"):
        return "bochs"
    if _at(buf, 0, b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$IMAGE offset=32\n"):
        return "cloop"
    if filename is not None and filename.endswith(".dmg") and buf:
        return "dmg"
    return None
