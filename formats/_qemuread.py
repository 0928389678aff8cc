"""How qemu 7.2's block layer reads an image file, for the decoders of the
formats that read past their first header (vpc, vhdx, vdi, luks, parallels,
bochs, cloop, dmg).

* ``bdrv_getlength`` of a file is its size **rounded up to whole 512-byte
  sectors** (:func:`qemu_length`): a fixed VHD's footer or a dmg trailer is
  looked for from there.
* A read that runs past the end of the file gets **zeros** for the missing
  part (file-posix zero-fills short reads; ``bdrv_aligned_preadv`` zero-fills
  past the length), so a header cut short is read as if padded with zeros,
  and qemu's own checks decide (:func:`read_padded`).
* A read must lie inside ``0..BDRV_MAX_LENGTH`` and be at most
  ``BDRV_REQUEST_MAX_BYTES`` long (``bdrv_check_request32``), or it fails
  (:func:`readable`).

Pure: every byte comes through a :class:`~imgchain.formats.Window`.
"""

from __future__ import annotations

from ._base import Window

__all__ = [
    "BDRV_MAX_LENGTH",
    "BDRV_REQUEST_MAX_BYTES",
    "INT64_MAX",
    "SECTOR",
    "qemu_length",
    "read_padded",
    "readable",
]

SECTOR = 512
INT64_MAX = (1 << 63) - 1
INT_MAX = (1 << 31) - 1
#: qemu's BDRV_MAX_LENGTH: INT64_MAX aligned down to 1 GiB.
BDRV_MAX_LENGTH = INT64_MAX & ~((1 << 30) - 1)
#: qemu's BDRV_REQUEST_MAX_BYTES: INT_MAX aligned down to 512 (of a 32-bit request).
BDRV_REQUEST_MAX_BYTES = INT_MAX & ~(SECTOR - 1)


def qemu_length(win: Window) -> int:
    """The file's length as ``bdrv_getlength`` gives it: rounded up to 512."""
    return (win.size + SECTOR - 1) // SECTOR * SECTOR


def readable(offset: int, length: int) -> bool:
    """Whether qemu's block layer accepts a read of ``length`` bytes at ``offset``."""
    return 0 <= offset <= BDRV_MAX_LENGTH and length <= BDRV_MAX_LENGTH - offset and length <= BDRV_REQUEST_MAX_BYTES


def read_padded(win: Window, offset: int, length: int, fmt: str, field: str, *, ahead: int = 0) -> bytes:
    """``length`` bytes at ``offset`` as qemu reads them: zeros past the end
    of the file.  (NeedBytes, as always, for what the file holds but the
    window lacks.)"""
    if length <= 0:
        return b""
    if offset >= win.size:
        return bytes(length)
    have = min(length, win.size - offset)
    data = win.get(offset, have, fmt, field, offset, ahead=max(have, min(ahead, win.size - offset)))
    return data + bytes(length - have)
