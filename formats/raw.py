"""raw: no header at all.  The virtual size is the file's size, rounded up
to whole 512-byte sectors as qemu counts it.  Raw is the fallback: the
registry tries it last and it accepts anything."""

from __future__ import annotations

from typing import NamedTuple

from ._base import Reference, Window, as_window

NAME = "raw"


class RawImage(NamedTuple):
    file_size: int

    # What raw has none of (properties: a NamedTuple has no class attributes).
    @property
    def format(self) -> str:
        return NAME

    @property
    def cluster_size(self) -> None:
        return None

    @property
    def backing_filename(self) -> None:
        return None

    @property
    def backing_format(self) -> None:
        return None

    @property
    def dirty(self) -> bool:
        return False

    @property
    def corrupt(self) -> bool:
        return False

    @property
    def encrypted(self) -> bool:
        return False

    @property
    def data_file(self) -> None:
        return None

    @property
    def references(self) -> tuple[Reference, ...]:
        return ()

    @property
    def virtual_size(self) -> int:
        return (self.file_size + 511) & ~511


def sniff(buf: bytes) -> bool:
    """Anything is raw."""
    return True


def decode(data: bytes | Window) -> RawImage:
    return RawImage(as_window(data).size)
