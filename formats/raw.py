"""raw: no header at all.  The virtual size is the file's size, rounded up
to whole 512-byte sectors as qemu counts it.  Raw is the fallback: the
registry tries it last and it accepts anything."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ._base import Window, as_window

NAME = "raw"


@dataclass(frozen=True, slots=True)
class RawImage:
    file_size: int

    format: ClassVar[str] = NAME
    cluster_size: ClassVar[int | None] = None
    backing_filename: ClassVar[str | None] = None
    backing_format: ClassVar[str | None] = None
    dirty: ClassVar[bool] = False
    corrupt: ClassVar[bool] = False
    encrypted: ClassVar[bool] = False
    data_file: ClassVar[str | None] = None

    @property
    def virtual_size(self) -> int:
        return (self.file_size + 511) & ~511


def sniff(buf: bytes) -> bool:
    """Anything is raw."""
    return True


def decode(data: bytes | Window) -> RawImage:
    return RawImage(as_window(data).size)
