"""raw: no header at all.  The virtual size is the file's size, rounded up
to whole 512-byte sectors as qemu counts it.  Raw is the fallback: the
registry tries it last and it accepts anything."""

from __future__ import annotations

from typing import NamedTuple

from ._base import Window, as_window, has_none_of

NAME = "raw"


@has_none_of(
    "cluster_size", "backing_filename", "backing_format", "dirty", "corrupt", "encrypted", "data_file", "references"
)
class RawImage(NamedTuple):
    file_size: int

    # (what raw has none of: has_none_of above)
    @property
    def format(self) -> str:
        return NAME

    @property
    def virtual_size(self) -> int:
        return (self.file_size + 511) & ~511


def sniff(buf: bytes) -> bool:
    """Anything is raw."""
    return True


def decode(data: bytes | Window) -> RawImage:
    return RawImage(as_window(data).size)
