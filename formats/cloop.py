"""cloop: the compressed loopback image of Knoppix, as qemu 7.2's
``block/cloop.c`` opens it (read-only).

There is no spec beyond cloop's own tools; the layout is what qemu reads,
big-endian: a shell preamble (:data:`MAGIC_V2_0`), at 128 the
``block_size`` and ``n_blocks`` (the names of qemu's ``BDRVCloopState``),
then ``n_blocks + 1`` 64-bit offsets of the compressed blocks.

* **Probe** (``cloop_probe``): **2** (not 100) when the file starts with the
  preamble of version 2.0 (83 bytes).  (imgchain's old signature table
  had another preamble, ``... offset=32``, which qemu does not know.)
* **Open**: ``block_size`` a non-zero multiple of 512 of at most 64 MiB;
  ``n_blocks`` at most (2**32 - 2) / 8; the offsets table at most 512 MiB;
  the offsets must not decrease, nor two follow each other by more than
  128 MiB.  The virtual size is ``n_blocks x block_size`` computed as qemu
  does, in 32-bit sectors (``n_blocks * (block_size / 512)`` wraps at 2**32).
  Offsets past the end of the file read as zeros.

``qemu-img info`` prints neither ``cluster-size`` nor ``dirty-flag``.
Pure: see ``formats._base``.
"""

from __future__ import annotations

from typing import NamedTuple

from construct import Int32ub, Struct

from imgchain.errors import FormatError

from ._base import Window, as_window, has_none_of, unpack
from ._qemuread import SECTOR, read_padded

NAME = "cloop"
MAGIC_V2_0 = b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"
PROBE_SCORE = 2
MAX_BLOCK_SIZE = 64 * 1024 * 1024
MAX_N_BLOCKS = ((1 << 32) - 2) // 8
MAX_OFFSETS_SIZE = 512 * 1024 * 1024
HEADER_OFFSET = 128

CLOOP_HEADER = Struct(
    "block_size" / Int32ub,  # 128
    "n_blocks" / Int32ub,  # 132
)
"""What qemu reads at 128; the offsets (``n_blocks + 1`` big-endian uint64) follow at 136."""


@has_none_of(
    "cluster_size", "backing_filename", "backing_format", "dirty", "corrupt", "encrypted", "data_file", "references"
)
class CloopImage(NamedTuple):
    block_size: int
    n_blocks: int
    offsets_end: int  #: the last offset (where the compressed data ends)

    @property
    def format(self) -> str:
        return NAME

    @property
    def virtual_size(self) -> int:
        return (self.n_blocks * (self.block_size // SECTOR)) % (1 << 32) * SECTOR

    @property
    def info_dirty_flag(self) -> None:
        return None


def probe(buf: bytes, filename: str | None = None) -> int:
    """qemu's ``cloop_probe``: 2 for the version 2.0 preamble."""
    return PROBE_SCORE if buf[:512].ljust(len(MAGIC_V2_0), b"\0").startswith(MAGIC_V2_0) else 0


def sniff(buf: bytes) -> bool:
    return probe(buf) > 0


def decode(data: bytes | Window) -> CloopImage:
    """Decode and check a cloop image with qemu 7.2's ``cloop_open`` rules.
    (qemu does not check the preamble when asked for cloop with ``-f``.)"""
    win = as_window(data)
    raw = read_padded(win, HEADER_OFFSET, 8, NAME, "header")
    block_size, n_blocks = unpack(CLOOP_HEADER, raw, NAME, "header", HEADER_OFFSET)
    if block_size % SECTOR:
        raise FormatError(NAME, f"block_size {block_size} must be a multiple of 512", field="block_size", offset=128)
    if block_size == 0:
        raise FormatError(NAME, "block_size cannot be zero", field="block_size", offset=128)
    if block_size > MAX_BLOCK_SIZE:
        raise FormatError(NAME, f"block_size {block_size} must be 64 MB or less", field="block_size", offset=128)
    if n_blocks > MAX_N_BLOCKS:
        raise FormatError(NAME, f"n_blocks {n_blocks} must be {MAX_N_BLOCKS} or less", field="n_blocks", offset=132)
    count = n_blocks + 1
    if count * 8 > MAX_OFFSETS_SIZE:
        raise FormatError(
            NAME, "image requires too many offsets, try increasing block size", field="n_blocks", offset=132
        )
    start = HEADER_OFFSET + 8
    # Only what the file holds is read: the rest reads as zeros.
    in_file = max(0, min(count, (win.size - start) // 8 + 1))
    table = read_padded(win, start, in_file * 8, NAME, "offsets", ahead=in_file * 8)
    previous = 0
    for i in range(count):
        value = int.from_bytes(table[i * 8 : i * 8 + 8], "big") if i < in_file else 0
        if i:
            if value < previous:
                raise FormatError(
                    NAME,
                    f"offsets not monotonically increasing at index {i}, image file is corrupt",
                    field="offsets",
                    offset=start + 8 * i,
                    value=value,
                )
            if value - previous > 2 * MAX_BLOCK_SIZE:
                raise FormatError(
                    NAME,
                    f"invalid compressed block size at index {i}, image file is corrupt",
                    field="offsets",
                    offset=start + 8 * i,
                    value=value,
                )
        if i >= in_file and previous == 0:
            break  # all zeros from here on: nothing more can fail
        previous = value
    return CloopImage(block_size, n_blocks, previous)
