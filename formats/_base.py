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
from collections import namedtuple
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

from construct import Bytes, ConstructError, FormatField, Struct

from imgchain.errors import FormatError, TruncatedError

__all__ = [
    "REFERENCE_KINDS",
    "DecodedImage",
    "NeedBytes",
    "Reference",
    "Window",
    "as_window",
    "c_string",
    "flat",
    "has_none_of",
    "make_record",
    "parse",
    "unpack",
]


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

    __slots__ = ("_chunks", "_memo", "size")

    def __init__(self, data: bytes, size: int | None = None) -> None:
        self.size = len(data) if size is None else size
        self._chunks: list[tuple[int, bytes]] = [(0, data)]
        self._memo: dict[object, Any] | None = None

    @property
    def memo(self) -> dict[object, Any]:
        """A place for a decoder to keep what it worked out from this
        window's bytes (a checksum ...) across the calls that NeedBytes makes
        it repeat; the bytes at an offset never change within one window."""
        if self._memo is None:
            self._memo = {}
        return self._memo

    @property
    def head(self) -> bytes:
        """The bytes read first, from offset 0 (a whole file in memory, or
        the probe's first read): a decoder may look into them directly,
        without a :meth:`get` for each field, but not past what they hold."""
        return self._chunks[0][1]

    def add(self, offset: int, data: bytes) -> None:
        """Make ``data``, read at file ``offset``, visible to decoders."""
        self._chunks.append((offset, data))

    def get(
        self, offset: int, length: int, fmt: str, field: str, field_offset: int | None = None, *, ahead: int = 0
    ) -> bytes:
        """``length`` bytes at ``offset``, needed for ``field`` (which is
        found at ``field_offset``).  TruncatedError if the file ends first.
        ``ahead``: if bytes must be read, how many the decoder will want from
        ``offset`` on (so that one read serves them all)."""
        end = offset + length
        first = self._chunks[0][1]
        if end <= len(first):  # the usual case: inside the first read
            return first[offset:end]
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
        raise NeedBytes(offset, max(length, min(ahead, self.size - offset)))


_Record = TypeVar("_Record", bound=tuple)  # type: ignore[type-arg]

if TYPE_CHECKING:

    def make_record(cls: type[_Record], fields: tuple[Any, ...], /) -> _Record:
        """A record (a NamedTuple class) made from a tuple of its fields in
        order, as ``_make`` makes it, without the Python-level ``__new__`` of
        the class: ``make_record(Image, (path, ...))``, for records made for
        every image."""

else:
    make_record = tuple.__new__


def as_window(data: bytes | Window) -> Window:
    return data if isinstance(data, Window) else Window(data)


class _Flat:
    """A flat layout (fixed-size integers and byte strings, one byte order)
    as one ``struct.Struct``: the same fields construct declares, unpacked
    in one call.  Built from the construct declaration itself, so the layout
    is still written once, in construct; tests/test_layouts.py proves both
    parse every input alike."""

    __slots__ = ("names", "record", "size", "struct", "unpack")

    def __init__(self, layout: Struct) -> None:
        order = ""
        codes = []
        names = []
        for field in layout.subcons:
            sub = field.subcon
            if isinstance(sub, FormatField):
                prefix, code = sub.fmtstr[0], sub.fmtstr[1:]
                if order and prefix != order:
                    raise TypeError(f"mixed byte order in {layout}")
                order = prefix
                codes.append(code)
            elif isinstance(sub, Bytes) and isinstance(sub.length, int):
                codes.append(f"{sub.length}s")
            else:
                raise TypeError(f"{field.name}: not a flat field")
            names.append(field.name)
        self.names = tuple(names)
        self.struct = struct.Struct((order or ">") + "".join(codes))
        self.unpack = self.struct.unpack
        self.size = self.struct.size
        self.record: Any = namedtuple("_Record", self.names)  # type: ignore[misc]


_FLAT: dict[int, _Flat] = {}


def flat(layout: Struct) -> _Flat:
    """The one-call unpacker of a flat construct layout (made once)."""
    compiled = _FLAT.get(id(layout))
    if compiled is None:
        compiled = _FLAT[id(layout)] = _Flat(layout)
    return compiled


def unpack(layout: Struct, data: bytes, fmt: str, what: str, offset: int) -> tuple[Any, ...]:
    """The fields of ``layout`` in ``data`` (read at file offset ``offset``),
    as a plain tuple in declaration order: the one place where a struct (or
    construct) exception becomes our :class:`FormatError`.  ``data`` comes
    from :meth:`Window.get`, which guarantees its length, so reaching the
    ``except`` means a layout bug, reported rather than crashed on."""
    try:
        return (_FLAT.get(id(layout)) or flat(layout)).unpack(data)
    except (ConstructError, struct.error, TypeError) as exc:  # pragma: no cover - lengths are guaranteed
        raise FormatError(fmt, f"cannot decode {what}: {exc}", field=what, offset=offset) from None


def parse(layout: Struct, data: bytes, fmt: str, what: str, offset: int) -> Any:
    """Like :func:`unpack`, with the fields by name (``.cluster_bits``)."""
    return flat(layout).record._make(unpack(layout, data, fmt, what, offset))


def c_string(raw: bytes) -> str:
    """A name stored in a header, read the way qemu reads it: as a C string
    (it ends at the first NUL), its bytes taken as a file system name would
    be (UTF-8, undecodable bytes kept through ``surrogateescape``)."""
    nul = raw.find(b"\0")
    if nul >= 0:
        raw = raw[:nul]
    return raw.decode("utf-8", "surrogateescape")


#: What a reference is to the image that names it.  A header names other files
#: in these roles, and qemu (or, for parent locators, other hypervisors)
#: opens them.
REFERENCE_KINDS = (
    "backing",  # the backing file: a layer of the chain (qcow2, qed, qcow, vmdk parentFileNameHint)
    "data-file",  # qcow2's external data file: the guest's data itself
    "extent",  # a vmdk extent file
    "parent-locator",  # a VHD/VHDX differencing disk's parent (qemu refuses these; others follow them)
)


class Reference(NamedTuple):
    """A file that a header names, in one shape for every format: the walker
    follows references, the audit holds each one to the roots, and the
    emitters show them.

    ``name`` is the name as stored (decoded as :func:`c_string` decodes).
    ``relative_to`` says how qemu resolves a relative ``name``: ``"image"``,
    against the folder of the name the image was opened by (qemu's
    ``bdrv_make_absolute_filename``, as for backing files and vmdk extents),
    or ``"cwd"``, against the working folder of whatever opens the image (a
    qcow2 data file).  ``format`` is the format recorded for it, if any.
    """

    kind: str
    name: str
    relative_to: str = "image"
    format: str | None = None


#: What a format says of the members of :class:`DecodedImage` it has none of.
_NONE_OF: dict[str, object] = {
    "cluster_size": None,
    "backing_filename": None,
    "backing_format": None,
    "dirty": False,
    "corrupt": False,
    "encrypted": False,
    "data_file": None,
    "references": (),
}

_R = TypeVar("_R", bound=type)


def has_none_of(*members: str) -> Callable[[_R], _R]:
    """A record class decorator: the :class:`DecodedImage` ``members`` that
    the format has none of (no backing file, no data file ...), as plain
    class attributes with their "none" value (a NamedTuple cannot inherit
    them from a base class)."""

    def add(cls: _R) -> _R:
        for name in members:
            if name in cls.__dict__:
                raise TypeError(f"{cls.__name__} defines {name} itself")
            setattr(cls, name, _NONE_OF[name])
        return cls

    return add


class DecodedImage(Protocol):
    """The face every decoded header shows the chain walker: each format's
    record (a NamedTuple) provides these, as fields or properties."""

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
    @property
    def references(self) -> tuple[Reference, ...]:
        """Every file the header names (backing file first, when there is one)."""
        ...
