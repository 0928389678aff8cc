"""Signatures of the image formats qemu knows but imgchain does not decode.

qemu would probe these files as their own format, not as raw.  Calling
such a file raw would be a lie (and, for a file declared raw, exactly the
disagreement a format-probing attack exploits), so the prober names the
format and refuses it.  Only the magic numbers of qemu's probe functions
are checked, and for ``dmg``, which qemu probes by name, the file name.
"""

from __future__ import annotations

__all__ = ["sniff_foreign"]


#: (format, offset, signature), from each qemu driver's probe function.
_SIGNATURES: tuple[tuple[str, int, bytes], ...] = (
    ("vpc", 0, b"conectix"),
    ("vhdx", 0, b"vhdxfile"),
    ("vdi", 64, b"\x7f\x10\xda\xbe"),
    ("luks", 0, b"LUKS\xba\xbe\x00\x01"),  # with version 1
    ("parallels", 0, b"WithoutFreeSpace\x02\x00\x00\x00"),  # with version 2
    ("parallels", 0, b"WithouFreSpacExt\x02\x00\x00\x00"),
    ("bochs", 0, b"Bochs Virtual HD Image\x00"),
    ("cloop", 0, b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$IMAGE offset=32\n"),
)


def sniff_foreign(buf: bytes, filename: str | None = None) -> str | None:
    """The name of the qemu format whose signature ``buf`` starts with, or
    None.  qemu takes any non-empty file whose name ends in ``.dmg`` for a
    dmg image (it has no magic at the start), so a ``filename`` counts too."""
    for name, offset, signature in _SIGNATURES:
        if buf.startswith(signature, offset):
            return name
    if filename is not None and filename.endswith(".dmg") and buf:
        return "dmg"
    return None
