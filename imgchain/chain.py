"""The chain walk: from a top image down its backing files.

Each layer's name is the one qemu would open (:func:`imgchain.names.combine`:
relative names against the overlay's name, absolute ones as they are), and
each layer is opened with the format its overlay recorded, or probed where
none is recorded.  The walk stops at:

* a layer with no backing file (the normal end);
* a backing name with a protocol (``nbd:``, ``http://``, ``json:`` ...): it
  is reported as :class:`RemoteBacking` and never opened.  A ``json:`` name
  for a local file (driver ``file`` or ``host_device``) and a ``file:`` name
  are local paths, and the walk goes on through them;
* a problem: a loop (found by device and inode, so ``./x``, ``x`` and a
  symlink to ``x`` are one file), a missing file, a file that is not a
  regular file or block device (never opened), a malformed header, or more
  layers than ``max_depth``.  With ``strict`` the problem is raised; without,
  it is kept in :attr:`Chain.error` beside the layers read before it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple

from imgchain.errors import BackingLoopError, ChainError, ChainTooDeepError, ImgChainError
from imgchain.names import combine, protocol_of, strip_file_protocol
from imgchain.probe import FormatSource, Image, read_image, stat_image

__all__ = ["MAX_DEPTH", "Chain", "Layer", "RemoteBacking", "resolve_chain"]

#: libvirt's limit on the layers of one chain; ``--max-depth`` changes it.
MAX_DEPTH = 200


class Layer(NamedTuple):
    """One image of a chain."""

    #: The name qemu gives this layer: as given for the top, the overlay's
    #: ``full_backing_filename`` below it.
    filename: str
    image: Image
    #: The backing name as the header records it, and as it resolves.
    backing_filename: str | None
    full_backing_filename: str | None

    @property
    def format(self) -> str:
        return self.image.format


class RemoteBacking(NamedTuple):
    """A backing name with a protocol: where the offline walk ends."""

    filename: str
    protocol: str
    #: The format the overlay recorded for it, if any.
    format: str | None


class Chain(NamedTuple):
    """A top image and its backing files, top first."""

    layers: tuple[Layer, ...]
    remote: RemoteBacking | None = None
    #: What stopped the walk early (only when not strict).
    error: ImgChainError | None = None

    @property
    def top(self) -> Layer:
        return self.layers[0]

    @property
    def complete(self) -> bool:
        """Whether the walk reached a layer with no backing file."""
        return self.error is None and self.remote is None


def resolve_chain(
    path: str | os.PathLike[str],
    fmt: str | None = None,
    *,
    max_depth: int = MAX_DEPTH,
    strict: bool = True,
    tables: bool = True,
    follow: bool = True,
    read: Callable[..., Image] = read_image,
    guard: Callable[[str], None] | None = None,
) -> Chain:
    """Walk the chain whose top image is ``path``.

    ``fmt`` is the top's format (None: probe it).  ``max_depth`` is the most
    layers the chain may hold, the top included.  ``tables`` is passed on to
    :func:`imgchain.probe.read_image`.  Without ``follow`` only the top
    is read (its backing name is reported, not opened), as ``qemu-img info``
    does without ``--backing-chain``.  ``read`` reads one layer (the audit
    passes a caching reader).  ``guard``, when given, is called with each
    layer's name before the layer is looked at, and may raise a ChainError
    (such as OutsideRootError) to stop the walk there.
    """
    path = os.fspath(path)
    if max_depth < 1:
        raise ValueError("max_depth must be at least 1")
    layers: list[Layer] = []
    seen: dict[tuple[int, int], str] = {}
    filename = strip_file_protocol(path)
    source = FormatSource.GIVEN if fmt is not None else None
    overlay: str | None = None
    try:
        protocol = protocol_of(filename)
        if protocol is not None:
            raise ChainError(filename, f"a {protocol!r} name, which cannot be examined offline")
        while True:
            if len(layers) >= max_depth:
                raise ChainTooDeepError(filename, f"the chain has more than {max_depth} layers (--max-depth)")
            if guard is not None:
                guard(filename)
            info = stat_image(filename)
            first = seen.get(info.identity)
            if first is not None:
                raise BackingLoopError(
                    filename,
                    f"is {first!r} again (same device and inode): the chain loops",
                )
            seen[info.identity] = filename
            image = read(filename, fmt, source=source, tables=tables, info=info)
            backing = image.decoded.backing_filename
            full = combine(filename, backing) if backing else None
            layers.append(Layer(filename, image, backing, full))
            if full is None or not follow:
                return Chain(tuple(layers))
            fmt = image.decoded.backing_format
            source = FormatSource.RECORDED if fmt is not None else None
            protocol = protocol_of(full)
            if protocol is not None:
                # A json: name may name a local file (driver file or
                # host_device), and file: always does: those are walked like
                # any path (qemu opens them relative to its working folder).
                from imgchain.backing_name import LocalPath, parse_backing_name  # only for such names

                parsed = parse_backing_name(full)
                if not isinstance(parsed.source, LocalPath):
                    return Chain(tuple(layers), remote=RemoteBacking(full, protocol, fmt))
                if fmt is None and parsed.format is not None:
                    fmt, source = parsed.format, FormatSource.RECORDED
                overlay, filename = filename, parsed.source.path
                continue
            overlay, filename = filename, full
    except ImgChainError as exc:
        if exc.path is None:
            exc.path = filename
        if exc.referrer is None:
            exc.referrer = overlay
        if strict:
            raise
        return Chain(tuple(layers), error=exc)
