"""luks: a raw LUKS (version 1) image, as qemu 7.2's ``block/crypto.c``
opens it: the whole file is a LUKS1 volume, its payload the guest's disk.

The header is decoded and checked by :mod:`imgchain.formats.luks` (the same
code that reads the LUKS header behind a LUKS-encrypted qcow2): qemu runs
the same ``qcrypto_block_luks_open`` checks, key or no key (``qemu-img
info`` opens with ``BDRV_O_NO_IO``: no secret is needed).

* **Probe** (``block_crypto_probe_luks`` → ``qcrypto_block_luks_has_format``):
  100 for the magic ``LUKS\\xba\\xbe`` with version 1.  qemu 7.2 knows no
  LUKS2: a LUKS2 volume is raw to it.
* **Virtual size**: the file's length (rounded up to 512) less the payload
  offset; a payload past the end of the file makes qemu's getlength fail.
* ``qemu-img info`` prints ``encrypted: true``, ``dirty-flag: false``, no
  ``cluster-size``, and ``format-specific`` ``{"type": "luks", "data":
  ...}`` with the same fields as a LUKS qcow2's ``encrypt`` (less
  ``format``): :attr:`LuksImage.luks` holds them.

Pure: see ``formats._base``.
"""

from __future__ import annotations

from typing import NamedTuple

from imgchain.errors import TruncatedError

from . import luks
from ._base import Window, as_window, has_none_of
from ._qemuread import qemu_length

NAME = "luks"
MAGIC = luks.MAGIC
VERSION = luks.VERSION


@has_none_of("cluster_size", "backing_filename", "backing_format", "dirty", "corrupt", "data_file", "references")
class LuksImage(NamedTuple):
    luks: luks.LuksHeader
    file_length: int  #: as qemu counts it: rounded up to 512

    @property
    def format(self) -> str:
        return NAME

    @property
    def virtual_size(self) -> int:
        return self.file_length - self.luks.payload_offset

    @property
    def info_dirty_flag(self) -> bool | None:
        return False

    @property
    def format_specific_type(self) -> str:
        """``format-specific``'s ``type``; its ``data`` is :attr:`luks`,
        shown as ``imgchain.emit.qemu`` shows a LUKS qcow2's ``encrypt``."""
        return "luks"

    @property
    def encrypted(self) -> bool:
        return True


def probe(buf: bytes, filename: str | None = None) -> int:
    """qemu's LUKS probe: 100 for the magic with version 1."""
    return 100 if buf[:6] == MAGIC and int.from_bytes(buf[6:8].ljust(2, b"\0"), "big") == VERSION else 0


def sniff(buf: bytes) -> bool:
    return probe(buf) > 0


def decode(data: bytes | Window) -> LuksImage:
    """Decode and check a raw LUKS1 image's header with qemu 7.2's rules."""
    win = as_window(data)
    header = luks.decode(win, 0)
    length = qemu_length(win)
    if header.payload_offset > length:
        raise TruncatedError(
            NAME,
            f"the payload starts at {header.payload_offset}, past the end of the file ({win.size})",
            field="payload_offset",
            offset=104,
            value=header.payload_offset,
        )
    return LuksImage(header, length)
