"""``imgchain xml --verify``: what a disk's XML declares against what is on disk.

libvirt trusts the formats and backing chains written in a domain's XML, so
XML that has drifted from the images is a real hazard: a layer declared raw
that holds a qcow2 header, a chain that is longer or shorter on disk, a path
that moved.  Each difference is a :class:`Difference`; none means the XML
tells the truth about the disk.
"""

from __future__ import annotations

from dataclasses import dataclass

from imgchain import formats
from imgchain.chain import MAX_DEPTH, resolve_chain
from imgchain.disk import Disk, DiskChain, DiskLayer, describe_layers
from imgchain.probe import same_file

__all__ = ["Difference", "verify_disk"]


@dataclass(frozen=True, slots=True)
class Difference:
    """One way a disk's XML disagrees with the disk."""

    kind: str  #: "missing-layer", "extra-layer", "path", "type", "format", "unreadable"
    chain: str  #: "chain" or "mirror"
    layer: int  #: 0 is the top
    message: str


def _where(layer: DiskLayer) -> str:
    if layer.network is not None:
        return f"{layer.network.protocol}:{layer.network.name or ''}"
    return repr(layer.path)


def _compare_layer(name: str, i: int, want: DiskLayer, have: DiskLayer, content: str | None) -> list[Difference]:
    out = []
    if want.type != have.type:
        out.append(Difference("type", name, i, f"the XML says type {want.type}, on disk it is {have.type}"))
    if want.network is not None or have.network is not None:
        if want.network != have.network:
            out.append(Difference("path", name, i, f"the XML says {_where(want)}, the chain names {_where(have)}"))
    elif want.path is not None and have.path is not None and not same_file(want.path, have.path):
        out.append(Difference("path", name, i, f"the XML says {want.path!r}, the chain has {have.path!r}"))
    if want.format is not None and have.format is not None and want.format != have.format:
        out.append(Difference("format", name, i, f"the XML says {want.format}, the chain has {have.format}"))
    elif want.format is not None and content is not None and content != want.format:
        out.append(Difference("format", name, i, f"the XML says {want.format}, but the content probes as {content}"))
    return out


def _verify_chain(name: str, declared: DiskChain, max_depth: int) -> list[Difference]:
    top = declared.top
    assert top.path is not None
    fmt = top.format if top.format in formats.names() else None
    walked = resolve_chain(top.path, fmt, max_depth=max_depth, strict=False, tables=False)
    actual = describe_layers(walked, top.path)
    contents = [layer.image.probed_format for layer in walked.layers]
    out: list[Difference] = []
    if top.format is not None and fmt is None:
        out.append(Difference("format", name, 0, f"the XML says {top.format}, which imgchain cannot check"))
    for i in range(max(len(declared.layers), len(actual.layers))):
        if i >= len(actual.layers):
            if walked.error is None:
                more = len(declared.layers) - i - 1
                what = f"the XML declares {_where(declared.layers[i])}; on disk the chain has ended"
                if more:
                    what += f" (and {more} more layer{'s' if more > 1 else ''} below it)"
                out.append(Difference("extra-layer", name, i, what))
            break
        if i >= len(declared.layers):
            if declared.ends:
                what = f"on disk the chain goes on to {_where(actual.layers[i])}; the XML says it ends"
                out.append(Difference("missing-layer", name, i, what))
            continue
        content = contents[i] if i < len(contents) else None
        out.extend(_compare_layer(name, i, declared.layers[i], actual.layers[i], content))
    if walked.error is not None:
        i = len(walked.layers)
        out.append(Difference("unreadable", name, i, walked.error.describe()))
    return out


def verify_disk(disk: Disk, *, max_depth: int = MAX_DEPTH) -> list[Difference]:
    """Every difference between ``disk`` as declared and the images on disk."""
    out = _verify_chain("chain", disk.chain, max_depth)
    if disk.mirror is not None and disk.mirror.top.path is not None:
        out.extend(_verify_chain("mirror", disk.mirror, max_depth))
    return out
