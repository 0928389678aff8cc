"""A disk's backing chain as XML describes it: the model the XML emitters
take and the XML reader gives back.

A :class:`DiskChain` is a list of :class:`DiskLayer` (top first) and whether
its end is known: ``ends`` is True when the last layer is known to have no
backing file, False when nothing is said of it (a network layer, whose own
backing cannot be known offline, or XML that does not say).
:func:`describe_chain` builds one from a walked :class:`~imgchain.chain.Chain`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from imgchain.backing_name import DirSource, LocalPath, NetworkSource, parse_backing_name
from imgchain.chain import Chain
from imgchain.errors import ImgChainError
from imgchain.names import libvirt_join, protocol_of

__all__ = ["Disk", "DiskChain", "DiskLayer", "backing_path", "describe_chain", "describe_layers"]

SOURCE_TYPES = ("file", "block", "network", "dir")


@dataclass(frozen=True, slots=True)
class DiskLayer:
    """One layer: where it is and its format (None where not known)."""

    type: str  #: "file", "block", "network" or "dir"
    path: str | None = None  #: file, device or directory; None for network
    network: NetworkSource | None = None
    format: str | None = None

    def __post_init__(self) -> None:
        if self.type not in SOURCE_TYPES:
            raise ValueError(f"layer type {self.type!r} is not one of {SOURCE_TYPES}")
        if (self.type == "network") != (self.network is not None):
            raise ValueError("a network layer, and only one, has a network source")
        if (self.type != "network") != (self.path is not None):
            raise ValueError("a local layer, and only one, has a path")


@dataclass(frozen=True, slots=True)
class DiskChain:
    layers: tuple[DiskLayer, ...]
    #: The last layer is known to have no backing file.
    ends: bool = True

    @property
    def top(self) -> DiskLayer:
        return self.layers[0]


@dataclass(frozen=True, slots=True)
class Disk:
    chain: DiskChain
    mirror: DiskChain | None = None
    target: str = "vda"
    bus: str = "virtio"


def absolute(path: str) -> str:
    """An absolute name for ``path``, naming the same file: the working
    folder before a relative name, ``.`` and doubled slashes dropped, and
    ``..`` kept (after a symlink, ``link/..`` is not the folder of ``link``)."""
    if not path.startswith("/"):
        path = os.getcwd() + "/" + path
    parts = [p for p in path.split("/") if p not in ("", ".")]
    return "/" + "/".join(parts)


def backing_path(overlay: str, name: str) -> str:
    """Where libvirt puts a relative backing name: the overlay's directory,
    a slash, the name, with nothing normalised (``/a/sub/../b``).  A local
    ``json:`` or ``file:`` name is its path, made absolute from the working
    folder, as qemu opens it."""
    if protocol_of(name) is not None:
        source = parse_backing_name(name).source
        assert isinstance(source, LocalPath)  # the walk went on through it
        return absolute(source.path)
    return libvirt_join(overlay, name)


def describe_chain(chain: Chain) -> DiskChain:
    """The XML view of a walked chain: absolute paths built as libvirt
    builds them, each layer's format as the walk found it, and a network
    layer (with the format its overlay recorded) where the walk ended at
    one.  A chain whose walk failed cannot be described: its error is raised."""
    if chain.error is not None:
        raise chain.error
    return describe_layers(chain)


def describe_layers(chain: Chain, top_path: str | None = None) -> DiskChain:
    """The XML view of the layers a walk read, even one that stopped on an
    error (its end is then not known).  ``top_path`` is the top's absolute
    path when the caller has it (default: the top's name made absolute)."""
    layers = []
    path = top_path if top_path is not None else absolute(chain.layers[0].filename) if chain.layers else ""
    for i, layer in enumerate(chain.layers):
        if i:
            previous = chain.layers[i - 1]
            assert previous.backing_filename is not None
            path = backing_path(path, previous.backing_filename)
        kind = "block" if layer.image.file.kind == "block" else "file"
        layers.append(DiskLayer(kind, path=path, format=layer.format))
    if chain.remote is None:
        return DiskChain(tuple(layers), ends=chain.error is None)
    parsed = parse_backing_name(chain.remote.filename)
    source = parsed.source
    fmt = chain.remote.format or parsed.format
    if isinstance(source, NetworkSource):
        layers.append(DiskLayer("network", network=source, format=fmt))
    elif isinstance(source, DirSource):
        # qemu shows a directory as a FAT disk (vvfat): libvirt's format "fat".
        layers.append(DiskLayer("dir", path=source.path, format=fmt or "fat"))
    elif isinstance(source, LocalPath):  # pragma: no cover - the walk follows local paths itself
        raise ImgChainError(f"local backing name {chain.remote.filename!r} left unwalked")
    return DiskChain(tuple(layers), ends=False)
