"""Reading a ``<disk>`` back: any of the three layouts of ``emit/xml.py``,
mirror included, into the :class:`~imgchain.disk.Disk` the emitters take.

Also libvirt's own forms a domain may hold: ``<backingStore>`` without
``index``, and the old ``<mirror file= format=/>``.  The layout is found
from the elements present; a disk that says nothing of its backing files
reads as a chain whose end is not known.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from imgchain.backing_name import Host, NetworkSource
from imgchain.disk import Disk, DiskChain, DiskLayer
from imgchain.errors import XmlError

__all__ = ["XmlError", "detect_layout", "find_disks", "parse_disk", "read_disks"]


def _layer(source: ET.Element | None, fmt: str | None, declared_type: str | None = None) -> DiskLayer:
    """A layer from its ``<source>`` (or flat ``<backing>``) element."""
    if source is None:
        raise XmlError("a layer has no <source>")
    a = source.attrib
    if "protocol" in a:
        kind, path, net = "network", None, _network(source)
    elif "file" in a:
        kind, path, net = "file", a["file"], None
    elif "dev" in a:
        kind, path, net = "block", a["dev"], None
    elif "dir" in a:
        kind, path, net = "dir", a["dir"], None
    else:
        raise XmlError(f"<{source.tag}> has none of file=, dev=, dir=, protocol=")
    if declared_type is not None and declared_type != kind:
        raise XmlError(f"type={declared_type!r} but <{source.tag}> describes a {kind} source")
    return DiskLayer(kind, path=path, network=net, format=fmt)


def _port(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        port = int(text)
    except ValueError:
        raise XmlError(f"host port {text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise XmlError(f"host port {port} outside 0..65535")
    return port


def _network(source: ET.Element) -> NetworkSource:
    hosts = tuple(
        Host(
            name=h.get("name"),
            port=_port(h.get("port")),
            transport=h.get("transport") or "tcp",
            socket=h.get("socket"),
        )
        for h in source.findall("host")
    )
    snapshot = source.find("snapshot")
    config = source.find("config")
    return NetworkSource(
        protocol=source.attrib["protocol"],
        name=source.get("name"),
        hosts=hosts,
        snapshot=None if snapshot is None else snapshot.get("name"),
        config=None if config is None else config.get("file"),
        query=source.get("query"),
    )


def _driver_format(element: ET.Element) -> str | None:
    driver = element.find("driver")
    return None if driver is None else driver.get("type")


def _format_type(element: ET.Element) -> str | None:
    fmt = element.find("format")
    return None if fmt is None else fmt.get("type")


def detect_layout(disk: ET.Element) -> str | None:
    """Which layout ``disk`` is in; None when it says nothing of backing files."""
    mirror = disk.find("mirror")
    if disk.find("backingStore") is not None or (mirror is not None and mirror.find("backingStore") is not None):
        return "backingstore"
    if mirror is not None and ("type" in mirror.attrib or "file" in mirror.attrib):
        return "backingstore"
    if disk.find("backing") is not None or (mirror is not None and mirror.find("backing") is not None):
        return "flat"
    mirror_source = None if mirror is None else mirror.find("source")
    if mirror_source is not None and "format" in mirror_source.attrib:
        return "flat"
    if disk.find("backingFile") is not None or mirror is not None:
        return "nested"
    return None


# -- per layout ---------------------------------------------------------------------------------


def _linked_chain(holder: ET.Element, top: DiskLayer, tag: str) -> DiskChain:
    """The layers nested in ``holder`` as ``<backingFile>`` (``tag``) or
    ``<backingStore>`` elements; an empty one says "has none"."""
    layers = [top]
    ends = False
    node = holder
    while (child := node.find(tag)) is not None:
        source = child.find("source")
        if source is None:  # the empty marker
            ends = True
            break
        if tag == "backingStore":
            layers.append(_layer(source, _format_type(child), child.get("type")))
        else:
            layers.append(_layer(source, _driver_format(child)))
        node = child
    return DiskChain(tuple(layers), ends=ends)


def _flat_chain(holder: ET.Element, top: DiskLayer) -> DiskChain:
    layers = [top]
    for backing in holder.findall("backing"):
        layers.append(_layer(backing, backing.get("format")))
    # The flat layout has no "has none" marker: it lists a whole chain, and a
    # network or directory layer ends what can be known offline.
    return DiskChain(tuple(layers), ends=layers[-1].type not in ("network", "dir"))


def parse_disk(disk: ET.Element, layout: str | None = None) -> Disk:
    """Read a ``<disk>`` element.  ``layout`` None: find it from the elements."""
    if disk.tag != "disk":
        raise XmlError(f"expected <disk>, found <{disk.tag}>")
    layout = layout or detect_layout(disk)
    source = disk.find("source")
    top = _layer(source, _driver_format(disk), disk.get("type") if layout == "backingstore" else None)
    mirror_el = disk.find("mirror")
    mirror = None
    if layout == "nested":
        chain = _linked_chain(disk, top, "backingFile")
        if mirror_el is not None:
            mirror = _linked_chain(
                mirror_el, _layer(mirror_el.find("source"), _driver_format(mirror_el)), "backingFile"
            )
    elif layout == "flat":
        chain = _flat_chain(disk, top)
        if mirror_el is not None:
            msource = mirror_el.find("source")
            mtop = _layer(msource, None if msource is None else msource.get("format"))
            mirror = _flat_chain(mirror_el, mtop)
    elif layout == "backingstore":
        chain = _linked_chain(disk, top, "backingStore")
        if mirror_el is not None:
            if "file" in mirror_el.attrib:  # libvirt's old form
                mtop = DiskLayer("file", path=mirror_el.attrib["file"], format=mirror_el.get("format"))
                mirror = DiskChain((mtop,), ends=False)
            else:
                mtop = _layer(mirror_el.find("source"), _format_type(mirror_el), mirror_el.get("type"))
                mirror = _linked_chain(mirror_el, mtop, "backingStore")
    elif layout is None:
        chain = DiskChain((top,), ends=False)
    else:
        raise ValueError(f"unknown layout {layout!r}")
    target = disk.find("target")
    return Disk(
        chain=chain,
        mirror=mirror,
        target=(target.get("dev") if target is not None else None) or "vda",
        bus=(target.get("bus") if target is not None else None) or "virtio",
    )


def find_disks(root: ET.Element) -> list[ET.Element]:
    """The ``<disk>`` elements of a ``<domain>`` (or a bare ``<disk>``)."""
    if root.tag == "disk":
        return [root]
    if root.tag != "domain":
        raise XmlError(f"expected <domain> or <disk>, found <{root.tag}>")
    return root.findall("./devices/disk")


def read_disks(text: str | bytes) -> list[tuple[ET.Element, Disk | None]]:
    """Parse XML text; each disk with its chain, or None for a disk with no
    local source to check (a network top, an empty CD-ROM)."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise XmlError(f"not well-formed XML: {exc}") from None
    out: list[tuple[ET.Element, Disk | None]] = []
    for element in find_disks(root):
        source = element.find("source")
        if source is None or not ({"file", "dev"} & set(source.attrib)):
            out.append((element, None))
        else:
            out.append((element, parse_disk(element)))
    return out
