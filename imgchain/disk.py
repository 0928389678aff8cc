"""A disk's backing chain as XML describes it: the model the XML emitters
take and the XML reader gives back.

A :class:`DiskChain` is a list of :class:`DiskLayer` (top first) and whether
its end is known: ``ends`` is True when the last layer is known to have no
backing file, False when nothing is said of it (a network layer, whose own
backing cannot be known offline, or XML that does not say).
:func:`describe_chain` builds one from a walked :class:`~imgchain.chain.Chain`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from imgchain.backing_name import DirSource, LocalPath, NetworkSource, parse_backing_name
from imgchain.chain import Chain, Layer
from imgchain.errors import BackingNameError, ImgChainError
from imgchain.names import libvirt_join, protocol_of
from imgchain.probe import FormatSource

__all__ = ["Disk", "DiskChain", "DiskLayer", "backing_path", "describe_chain", "describe_layers"]

SOURCE_TYPES = ("file", "block", "network", "dir")


#: libvirt's names for qcow2's encryption methods (<encryption format=>).
_ENCRYPTION = {"luks": "luks", "aes": "qcow"}


@dataclass(frozen=True, slots=True)
class DiskLayer:
    """One layer: where it is and its format (None where not known).

    The fields after ``format`` are what libvirt also writes for a layer:
    a raw slice (``<slices>``), the external data file (``<dataStore>``)
    and the encryption format (``<encryption format=>``).  The ones not
    compared are facts about the images that the XML does not carry: they
    tell the emitters what libvirt will make of the layer.
    """

    type: str  #: "file", "block", "network" or "dir"
    path: str | None = None  #: file, device or directory; None for network
    network: NetworkSource | None = None
    format: str | None = None
    #: A json: raw driver's (offset, size): libvirt's <slice type='storage'>.
    slice: tuple[int | None, int | None] | None = None
    #: The external data file (qcow2 data-file extension), as libvirt names it.
    data_file: str | None = None
    #: "luks" or "qcow" (qcow2's AES): libvirt's <encryption format=>.
    encryption: str | None = None
    #: The backing name as the overlay records it (None for the top).
    name: str | None = field(default=None, compare=False)
    #: Whether the overlay records no format for it, so that libvirt would
    #: have to probe it (and refuses to, where it has a backing file of its own).
    probed: bool = field(default=False, compare=False)
    #: Whether it names a backing file of its own.
    has_backing: bool = field(default=False, compare=False)
    #: What the content probes as, where that is not ``format``.
    content: str | None = field(default=None, compare=False)
    #: Why libvirt's parser refuses its backing name (libvirt's own words), if it does.
    refusal: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.type not in SOURCE_TYPES:
            raise ValueError(f"layer type {self.type!r} is not one of {SOURCE_TYPES}")
        if (self.type == "network") != (self.network is not None):
            raise ValueError("a network layer, and only one, has a network source")
        if (self.type != "network") != (self.path is not None):
            raise ValueError("a local layer, and only one, has a path")


@dataclass(frozen=True, slots=True)
class DiskChain:
    """The layers of one disk's chain (or of its mirror's), top first."""

    layers: tuple[DiskLayer, ...]
    #: The last layer is known to have no backing file.
    ends: bool = True
    #: Whether the XML declares a chain at all (libvirt's usual inactive XML
    #: does not: libvirt then finds the chain itself when the domain starts).
    declared: bool = True
    #: Layers written inside a ``<backingStore>`` without ``type=``, which
    #: libvirt reads as "no backing file" and ignores.
    ignored: int = 0
    #: What libvirt itself would refuse in this XML (found by the reader):
    #: (layer, reason) pairs.
    refused: tuple[tuple[int, str], ...] = ()

    @property
    def top(self) -> DiskLayer:
        return self.layers[0]


@dataclass(frozen=True, slots=True)
class Disk:
    """One <disk>: its chain, its mirror's, and its target."""

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


def _join(overlay: str, name: str) -> str:
    """libvirt's virStorageSourceNewFromBackingRelative: the overlay's
    ``g_path_get_dirname``, a slash, the name (``.`` for a relative overlay
    with no folder: ``./name``)."""
    if overlay.startswith("/") or name.startswith("/"):
        return libvirt_join(overlay, name)
    folder = overlay.rsplit("/", 1)[0] if "/" in overlay else "."
    return f"{folder}/{name}"


def backing_path(overlay: str, name: str) -> str:
    """Where libvirt puts a backing name: a relative one after the overlay's
    directory and a slash, with nothing normalised (``/a/sub/../b``).  A
    local ``json:`` name is its path as written, relative or not, as libvirt
    keeps it (virStorageSourceParseBackingJSONPath); a ``file:`` name (which
    libvirt refuses) its path."""
    if protocol_of(name) is not None:
        source = parse_backing_name(name).source
        assert isinstance(source, LocalPath)  # the walk went on through it
        return source.path
    return _join(overlay, name)


def libvirt_refusal(name: str) -> str | None:
    """Why libvirt's backing-name parser refuses ``name`` (in libvirt's
    words), or None when it reads it: a ``file:`` name (no such protocol),
    a ``json:`` name whose format driver is not ``raw`` (libvirt has a
    parser for ``raw`` only)."""
    protocol = protocol_of(name)
    if protocol is None:
        return None
    if protocol == "file":
        return "invalid backing protocol 'file'"
    try:
        parsed = parse_backing_name(name)
    except BackingNameError as exc:
        return exc.reason
    if protocol == "json" and parsed.format not in (None, "raw"):
        return f"missing parser implementation for JSON backing volume driver {parsed.format!r}"
    return None


def _local_layer(layer: Layer, path: str, name: str | None, probed: bool) -> DiskLayer:
    image = layer.image
    decoded = image.decoded
    data_file = getattr(decoded, "data_file", None)
    if data_file is not None:
        # (a data file with a protocol cannot be written as libvirt would)
        data_file = _join(path, data_file) if protocol_of(data_file) is None else None
    slice_ = None
    if name is not None and protocol_of(name) == "json":
        slice_ = parse_backing_name(name).slice
    return DiskLayer(
        "block" if image.file.kind == "block" else "file",
        path=path,
        format=layer.format,
        slice=slice_,
        data_file=data_file,
        encryption=_ENCRYPTION.get(getattr(decoded, "encryption_format", None) or ""),
        name=name,
        probed=probed,
        has_backing=layer.backing_filename is not None,
        content=image.probed_format if image.probed_format != layer.format else None,
        refusal=None if name is None else libvirt_refusal(name),
    )


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
        name = None
        probed = layer.image.format_source is FormatSource.PROBED
        if i:
            previous = chain.layers[i - 1]
            name = previous.backing_filename
            assert name is not None
            path = backing_path(path, name)
            # libvirt takes a backing layer's format from its overlay's record
            # only (a json: name's driver does not count): none recorded, it probes.
            probed = previous.image.decoded.backing_format is None
        layers.append(_local_layer(layer, path, name, probed))
    if chain.remote is None:
        return DiskChain(tuple(layers), ends=chain.error is None)
    name = chain.remote.filename
    parsed = parse_backing_name(name)
    source = parsed.source
    fmt = chain.remote.format or parsed.format
    refusal = libvirt_refusal(name)
    if isinstance(source, NetworkSource):
        probed = chain.remote.format is None  # (libvirt cannot probe a network layer at all)
        net = DiskLayer("network", network=source, format=fmt, slice=parsed.slice)
        layers.append(dataclasses.replace(net, name=name, probed=probed, refusal=refusal))
    elif isinstance(source, DirSource):
        # qemu shows a directory as a FAT disk (vvfat): libvirt's format "fat"
        # (libvirt's parser gives it that format itself).
        layers.append(DiskLayer("dir", path=source.path, format=fmt or "fat", name=name, refusal=refusal))
    elif isinstance(source, LocalPath):  # pragma: no cover - the walk follows local paths itself
        raise ImgChainError(f"local backing name {chain.remote.filename!r} left unwalked")
    return DiskChain(tuple(layers), ends=False)
