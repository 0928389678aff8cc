"""What every decoder shares: the window of bytes a decoder reads through,
the one place construct errors become ours, and C strings from headers.

Decoders are pure: they look at a file only through a :class:`Window`, the
ranges of it read so far and the file's true size.  When a decoder needs
bytes the window lacks but the file holds, it raises :class:`NeedBytes`
naming them; the caller (``imgchain.probe``) reads exactly those and calls
again.  When the file itself ends too soon, the decoder raises
:class:`TruncatedError`.  A window over a whole file held in memory
(``Window(data)``, or plain bytes passed to a ``decode``) never raises
``NeedBytes``.
"""

from __future__ import annotations

import struct
from typing import Any, Protocol

from construct import ConstructError, Struct

from imgchain.errors import FormatError, TruncatedError

__all__ = ["DecodedImage", "NeedBytes", "Window", "as_window", "c_string", "parse"]


class NeedBytes(Exception):
    """Not an error: the decoder needs ``length`` bytes at file ``offset``
    that its :class:`Window` does not hold yet (the file does)."""

    def __init__(self, offset: int, length: int) -> None:
        super().__init__(offset, length)
        self.offset = offset
        self.length = length


class Window:
    """The bytes of one file that a decoder may look at: some ranges of it,
    and the file's true size.  ``Window(data)`` is a whole file in memory."""

    __slots__ = ("_chunks", "size")

    def __init__(self, data: bytes, size: int | None = None) -> None:
        self.size = len(data) if size is None else size
        self._chunks: list[tuple[int, bytes]] = [(0, data)]

    def add(self, offset: int, data: bytes) -> None:
        """Make ``data``, read at file ``offset``, visible to decoders."""
        self._chunks.append((offset, data))

    def get(self, offset: int, length: int, fmt: str, field: str, field_offset: int | None = None) -> bytes:
        """``length`` bytes at ``offset``, needed for ``field`` (which is
        found at ``field_offset``).  TruncatedError if the file ends first."""
        end = offset + length
        if end > self.size:
            raise TruncatedError(
                fmt,
                f"{field} needs bytes {offset}..{end} but the file has only {self.size}",
                field=field,
                offset=offset if field_offset is None else field_offset,
            )
        for start, data in self._chunks:
            if start <= offset and end <= start + len(data):
                return data[offset - start : end - start]
        raise NeedBytes(offset, length)


def as_window(data: bytes | Window) -> Window:
    return data if isinstance(data, Window) else Window(data)


def parse(layout: Struct, data: bytes, fmt: str, what: str, offset: int) -> Any:
    """Parse ``layout`` from ``data`` (read at file offset ``offset``): the
    one place where a construct (or struct) exception becomes our
    :class:`FormatError`.  ``data`` comes from :meth:`Window.get`, which
    guarantees its length, so reaching the ``except`` means a layout bug,
    which is reported rather than crashed on."""
    try:
        return layout.parse(data)
    except (ConstructError, struct.error) as exc:  # pragma: no cover - lengths are guaranteed
        raise FormatError(fmt, f"cannot decode {what}: {exc}", field=what, offset=offset) from None


def c_string(raw: bytes) -> str:
    """A name stored in a header, read the way qemu reads it: as a C string
    (it ends at the first NUL), its bytes taken as a file system name would
    be (UTF-8, undecodable bytes kept through ``surrogateescape``)."""
    nul = raw.find(b"\0")
    if nul >= 0:
        raw = raw[:nul]
    return raw.decode("utf-8", "surrogateescape")


class DecodedImage(Protocol):
    """The face every decoded header shows the chain walker: each format's
    frozen dataclass provides these, as fields or properties."""

    @property
    def format(self) -> str: ...
    @property
    def virtual_size(self) -> int: ...
    @property
    def cluster_size(self) -> int | None: ...
    @property
    def backing_filename(self) -> str | None: ...
    @property
    def backing_format(self) -> str | None: ...
    @property
    def dirty(self) -> bool: ...
    @property
    def corrupt(self) -> bool: ...
    @property
    def encrypted(self) -> bool: ...
    @property
    def data_file(self) -> str | None: ...
