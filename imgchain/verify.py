"""``imgchain xml --verify``: what a disk's XML declares against what is on disk.

libvirt trusts the formats and backing chains written in a domain's XML, so
XML that has drifted from the images is a real hazard: a layer declared raw
that holds a qcow2 header, a chain that is longer or shorter on disk, a path
that moved.  Each difference is a :class:`Difference`; none means the XML
tells the truth about the disk.

The XML is read as libvirt reads it (see :mod:`imgchain.xmlread`): a
``<backingStore>`` without ``type=`` ends the chain, a host without a port
has the protocol's default port, what libvirt itself refuses is a
difference.  A disk whose XML declares no chain (libvirt's usual inactive
XML) is checked as libvirt will walk it when the domain starts: the number
of layers it will find, and any layer it will refuse to probe.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from imgchain import formats
from imgchain.backing_name import NetworkSource, default_port
from imgchain.chain import MAX_DEPTH, resolve_chain
from imgchain.disk import Disk, DiskChain, DiskLayer, describe_layers
from imgchain.probe import same_file

__all__ = ["Difference", "Verdict", "verify", "verify_disk"]

KINDS = (
    "missing-layer",
    "extra-layer",
    "path",
    "type",
    "format",
    "unreadable",
    "ignored-layers",
    "libvirt-refuses",
    "relative-path",
)


@dataclass(frozen=True, slots=True)
class Difference:
    """One way a disk's XML disagrees with the disk (or with libvirt)."""

    kind: str  #: one of :data:`KINDS`
    chain: str  #: "chain" or "mirror"
    layer: int  #: 0 is the top
    message: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """What checking one <disk> against the images found: its differences."""

    differences: list[Difference]
    #: For a disk whose XML declares no chain: how many layers libvirt will
    #: find when the domain starts (None when the XML declares the chain).
    libvirt_finds: int | None = None


def _normal(net: NetworkSource) -> NetworkSource:
    """An omitted port is the protocol's default port (libvirt fills it in)."""
    hosts = tuple(
        dataclasses.replace(h, port=default_port(net.protocol))
        if h.port is None and h.transport == "tcp" and h.name is not None
        else h
        for h in net.hosts
    )
    return dataclasses.replace(net, hosts=hosts)


def _where(layer: DiskLayer) -> str:
    """A layer for a message: a path, or a network source with every host and port."""
    if layer.network is None:
        return repr(layer.path)
    net = _normal(layer.network)
    hosts = ",".join(
        f"unix:{h.socket}" if h.transport == "unix" else f"{h.name}" + ("" if h.port is None else f":{h.port}")
        for h in net.hosts
    )
    return repr(f"{net.protocol}://{hosts}/{net.name or ''}")


def _compare_layer(name: str, i: int, want: DiskLayer, have: DiskLayer, content: str | None) -> list[Difference]:
    out = []
    if want.type != have.type:
        out.append(Difference("type", name, i, f"the XML says type {want.type}, on disk it is {have.type}"))
    if want.network is not None or have.network is not None:
        if want.network is None or have.network is None or _normal(want.network) != _normal(have.network):
            out.append(Difference("path", name, i, f"the XML says {_where(want)}, the chain names {_where(have)}"))
    elif want.path is not None and have.path is not None and not same_file(want.path, have.path):
        out.append(Difference("path", name, i, f"the XML says {want.path!r}, the chain has {have.path!r}"))
    if want.format is not None and have.format is not None and want.format != have.format:
        out.append(Difference("format", name, i, f"the XML says {want.format}, the chain has {have.format}"))
    elif want.format is not None and content is not None and content != want.format:
        out.append(Difference("format", name, i, f"the XML says {want.format}, but the content probes as {content}"))
    for what in ("slice", "data_file", "encryption"):
        said, found = getattr(want, what), getattr(have, what)
        if said != found:
            out.append(Difference("path", name, i, f"the XML says {what} {said!r}, the chain has {found!r}"))
    return out


def _relative(name: str, declared: DiskChain) -> list[Difference]:
    out = []
    for i, layer in enumerate(declared.layers):
        if layer.path is not None and not layer.path.startswith("/"):
            out.append(
                Difference(
                    "relative-path",
                    name,
                    i,
                    f"the XML names the relative path {layer.path!r}: libvirt resolves it against its own "
                    "working folder, not this one (checked here against this one)",
                )
            )
    return out


def _libvirt_walk(name: str, actual: DiskChain) -> tuple[int, list[Difference]]:
    """How many layers libvirt finds when it walks the chain itself, and what
    it refuses on the way (virStorageSourceGetMetadataRecurse)."""
    out: list[Difference] = []
    layers = actual.layers
    for i in range(1, len(layers)):
        layer, overlay = layers[i], layers[i - 1]
        if layer.refusal is not None:
            out.append(
                Difference(
                    "libvirt-refuses",
                    name,
                    i,
                    f"libvirt refuses the backing name {layer.name!r} of {overlay.path!r} ({layer.refusal}): "
                    "the domain will not start",
                )
            )
            return i, out
        if layer.network is not None and layer.network.inline_auth:
            return i, out  # libvirt adds no layer for a name with inline credentials
        if layer.probed and (layer.has_backing or layer.network is not None):
            out.append(
                Difference(
                    "libvirt-refuses",
                    name,
                    i,
                    f"format of backing image {layer.name!r} of image {overlay.path!r} was not specified in the "
                    "image metadata: libvirt will refuse to probe it, and the domain will not start "
                    f"(record it: qemu-img rebase -u -b {layer.name!r} -F FORMAT {overlay.path!r})",
                )
            )
            return i, out
    return len(layers), out


def _verify_chain(name: str, declared: DiskChain, max_depth: int) -> Verdict:
    top = declared.top
    assert top.path is not None
    out: list[Difference] = _relative(name, declared)
    out.extend(Difference("libvirt-refuses", name, i, f"libvirt refuses this XML: {w}") for i, w in declared.refused)
    top_format = top.format
    if not declared.declared and top_format is None:
        top_format = "raw"  # libvirt's default for a disk without <driver type=>
    fmt = top_format if top_format in formats.names() else None
    walked = resolve_chain(top.path, fmt, max_depth=max_depth, strict=False, tables=False)
    actual = describe_layers(walked, top.path)
    contents = [layer.image.probed_format for layer in walked.layers]
    if top_format is not None and fmt is None:
        out.append(Difference("format", name, 0, f"the XML says {top_format}, which imgchain cannot check"))
    if declared.ignored:
        n = declared.ignored
        out.append(
            Difference(
                "ignored-layers",
                name,
                len(declared.layers),
                f"the <backingStore> below layer {len(declared.layers) - 1} has no type=, which libvirt reads as "
                f"'no backing file': the {n} layer{'s' if n > 1 else ''} written inside it "
                f"{'are' if n > 1 else 'is'} ignored",
            )
        )
    if not declared.declared:
        if actual.layers:
            out.extend(_compare_layer(name, 0, top, actual.layers[0], contents[0] if contents else None))
        found, refused = _libvirt_walk(name, actual)
        out.extend(refused)
        if walked.error is not None:
            out.append(Difference("unreadable", name, len(walked.layers), walked.error.describe()))
        return Verdict(out, found)
    common = min(len(declared.layers), len(actual.layers))
    for i in range(common):
        content = contents[i] if i < len(contents) else None
        out.extend(_compare_layer(name, i, declared.layers[i], actual.layers[i], content))
    if len(declared.layers) > common and walked.error is None:
        i = common
        more = len(declared.layers) - i - 1
        what = f"the XML declares {_where(declared.layers[i])}; on disk the chain has ended"
        if more:
            what += f" (and {more} more layer{'s' if more > 1 else ''} below it)"
        out.append(Difference("extra-layer", name, i, what))
    if len(actual.layers) > common and declared.ends:
        i = common
        more = len(actual.layers) - i - 1
        what = f"on disk the chain goes on to {_where(actual.layers[i])}"
        if more:
            what += f" (and {more} more layer{'s' if more > 1 else ''})"
        out.append(Difference("missing-layer", name, i, what + "; the XML says it ends"))
    if walked.error is not None:
        out.append(Difference("unreadable", name, len(walked.layers), walked.error.describe()))
    return Verdict(out)


def verify(disk: Disk, *, max_depth: int = MAX_DEPTH) -> Verdict:
    """Every difference between ``disk`` as declared and the images on disk."""
    verdict = _verify_chain("chain", disk.chain, max_depth)
    out = list(verdict.differences)
    if disk.mirror is not None and disk.mirror.top.path is not None:
        out.extend(_verify_chain("mirror", disk.mirror, max_depth).differences)
    return Verdict(out, verdict.libvirt_finds)


def verify_disk(disk: Disk, *, max_depth: int = MAX_DEPTH) -> list[Difference]:
    """Every difference between ``disk`` as declared and the images on disk."""
    return verify(disk, max_depth=max_depth).differences
