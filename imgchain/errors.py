"""The exception tree of imgchain.

::

    ImgChainError                     everything imgchain raises on purpose
    ├─ FormatError(ValueError)        a header breaks its format's rules
    │  ├─ TruncatedError              the header runs past the end of the file
    │  └─ UnsupportedFeatureError     well formed, but must be refused
    │                                 (unknown incompatible bits, version, ...)
    ├─ BackingNameError(ValueError)   a backing name that cannot be parsed,
    │                                 or that libvirt would refuse
    ├─ XmlError                       XML that cannot be read as a disk
    ├─ XmlEmitError                   a chain that a layout cannot express
    ├─ PathError                      a path named by the user that cannot be
    │                                 used (not a file, unreadable ...)
    └─ ChainError                     a problem of the chain, not of one header
       ├─ BackingLoopError            a layer is its own ancestor
       ├─ BackingMissingError         a backing file does not exist
       ├─ ChainTooDeepError           more layers than the depth limit
       ├─ NotRegularFileError         a FIFO, socket, character device or
       │                              directory where an image should be
       ├─ ImageAccessError            the OS refused to stat, open or read it
       └─ OutsideRootError            a layer outside the allowed directories

Every message is one line.  Untrusted strings (backing names above all) are
put into messages with ``!r`` so that they cannot drive a terminal.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BackingLoopError",
    "BackingMissingError",
    "BackingNameError",
    "ChainError",
    "ChainTooDeepError",
    "FormatError",
    "ImageAccessError",
    "ImgChainError",
    "NotRegularFileError",
    "OutsideRootError",
    "PathError",
    "TruncatedError",
    "UnsupportedFeatureError",
    "XmlEmitError",
    "XmlError",
    "name_text",
    "plain",
    "quoted",
    "shown",
]


class ImgChainError(Exception):
    """Base of every error imgchain raises on purpose.

    ``path`` names the file concerned, when one is (the probe sets it on the
    format errors of the file it read); ``str()`` is the reason alone, so a
    front end prints ``imgchain: <path>: <reason>``.
    """

    path: str | None = None
    #: The overlay whose backing file ``path`` is, when it is one.
    referrer: str | None = None

    def describe(self) -> str:
        """One line: ``<path>: <reason> (backing file of <overlay>)``.
        Paths that are not plain printable text are shown quoted and escaped."""
        text = str(self)
        if self.referrer is not None:
            text += f" (backing file of {self.referrer!r})"
        if self.path is not None:
            text = f"{shown(self.path)}: {text}"
        return text


def plain(text: str) -> bool:
    """Whether ``text`` can go to a terminal as it is: printable characters
    only (no control, format, separator other than space, or unassigned
    character) and no undecodable byte (kept as a lone surrogate)."""
    if not text.isprintable():
        return False
    try:
        text.encode("utf-8")  # undecodable bytes are lone surrogates, which do not encode
    except UnicodeEncodeError:
        return False
    return True


def quoted(text: str) -> str:
    """``text`` in single quotes with every character that is not printable
    escaped, as Python writes it, so that the result is one line of
    printable text: ``\\n``, ``\\r``, ``\\t``, ``\\xNN`` below 0x80, ``\\uNNNN``
    or ``\\UNNNNNNNN`` above, and ``\\xNN`` (NN of 80..ff) for a byte that is
    not UTF-8, so that ``\\x80`` and above is always a raw byte.  A quote and
    a backslash are escaped too."""
    out = ["'"]
    for c in text:
        escape = _ESCAPES.get(c)
        if escape is not None:
            out.append(escape)
        elif c.isprintable():
            out.append(c)
        else:
            cp = ord(c)
            if 0xDC80 <= cp <= 0xDCFF:  # an undecodable byte (surrogateescape)
                out.append(f"\\x{cp - 0xDC00:02x}")
            elif cp < 0x80:
                out.append(f"\\x{cp:02x}")
            elif cp <= 0xFFFF:
                out.append(f"\\u{cp:04x}")
            else:
                out.append(f"\\U{cp:08x}")
    out.append("'")
    return "".join(out)


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\", "'": "\\'"}


def shown(path: str) -> str:
    """A file name safe to print on a terminal and in a one-line message: as
    it is when it is plain printable text without spaces at either end, else
    :func:`quoted`."""
    if plain(path) and path.strip() == path:
        return path
    return quoted(path)


def name_text(name: str) -> str:
    """A name (from a header, or a file name) for a line of output where
    qemu-img prints it raw: as it is when :func:`plain`, else :func:`quoted`,
    so that no name can break a line, forge one, or drive a terminal."""
    return name if plain(name) else quoted(name)


class FormatError(ImgChainError, ValueError):
    """A header that breaks its format's rules.

    ``str()`` reads ``"qcow2: cluster_bits 30 outside 9..21 [cluster_bits @ 0x14]"``:
    the format, what is wrong, and where (field and byte offset) when known.
    """

    def __init__(
        self,
        fmt: str,
        reason: str,
        *,
        field: str | None = None,
        offset: int | None = None,
        value: object = None,
    ) -> None:
        self.fmt = fmt
        self.reason = reason
        self.field = field
        self.offset = offset
        self.value = value
        #: What the file probes as, when the probe knows (a declared format
        #: that does not fit the content shows here).
        self.probed_format: str | None = None
        #: The files qemu opens for this file before it refuses it (a vmdk
        #: descriptor's extents), as ``imgchain.formats.Reference`` values.
        self.opens: tuple[Any, ...] = ()
        super().__init__(self._render())

    def _render(self) -> str:
        where = ""
        if self.field is not None and self.offset is not None:
            where = f" [{self.field} @ {self.offset:#x}]"
        elif self.field is not None:
            where = f" [{self.field}]"
        elif self.offset is not None:
            where = f" [@ {self.offset:#x}]"
        return f"{self.fmt}: {self.reason}{where}"


class TruncatedError(FormatError):
    """The header, or something it points at that the header work needs,
    lies past the end of the file."""


class UnsupportedFeatureError(FormatError):
    """Well formed, but the format's rules say to refuse it."""


class BackingNameError(ImgChainError, ValueError):
    """A backing name (``nbd:...``, ``json:{...}``) that is malformed or that
    libvirt would refuse.  ``backing_name`` is the name with any credentials
    masked; ``shown`` a shorter form for the message."""

    def __init__(self, backing_name: str, reason: str, *, shown: str | None = None) -> None:
        self.reason = reason
        self.backing_name = backing_name
        super().__init__(f"{reason}: {(shown if shown is not None else backing_name)!r}")


class XmlError(ImgChainError):
    """XML that is not a disk description imgchain can read."""


class XmlEmitError(ImgChainError):
    """A chain that cannot be written in the layout asked for."""


class PathError(ImgChainError):
    """A path the user named that cannot be used as asked."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(reason)
        self.path = path


class ChainError(ImgChainError):
    """A problem of the chain as a whole.  ``path`` is the layer concerned."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(reason)


class BackingLoopError(ChainError):
    """A layer is its own ancestor (found by device and inode)."""


class BackingMissingError(ChainError):
    """A backing file does not exist."""


class ChainTooDeepError(ChainError):
    """The chain has more layers than the depth limit."""


class NotRegularFileError(ChainError):
    """A FIFO, socket, character device or directory stands where an image
    should be.  It is never opened."""


class ImageAccessError(ChainError):
    """The OS refused to stat, open or read a file (permissions, I/O error)."""


class OutsideRootError(ChainError):
    """A layer lies outside every directory the caller allowed (``--root``);
    it is neither stat-ed nor opened."""
