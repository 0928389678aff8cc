"""Reading a ``<disk>`` back: any of the four layouts of ``emit/xml.py``,
mirror included, into the :class:`~imgchain.disk.Disk` the emitters take.

Also libvirt's own forms a domain may hold, read as libvirt reads them:

* ``<backingStore>`` without ``index``;
* a ``<backingStore>`` without ``type=`` is "no backing file", whatever it
  holds (``virDomainDiskBackingStoreParse``): the layers written inside it
  are counted in :attr:`DiskChain.ignored`;
* a ``<backingStore type=...>`` without ``<format>`` is refused by libvirt
  ("missing disk backing store format"): noted in :attr:`DiskChain.refused`;
* the live ``<mirror type='file' file= format= job='copy'>`` with its
  ``<format>``, ``<source>`` and chain, and the old ``<mirror file= format=/>``.

The layout is found from the elements present; a disk that says nothing of
its backing files reads as a chain that is not declared (libvirt then finds
the chain itself).  A disk that cannot be read (``type='block'`` with
``file=``, ...) is one :class:`XmlError` for that disk alone.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from imgchain.backing_name import Host, NetworkSource
from imgchain.disk import Disk, DiskChain, DiskLayer
from imgchain.errors import XmlError

__all__ = ["XmlError", "detect_layout", "find_disks", "parse_disk", "read_disks"]

_KIND_OF_ATTR = {"file": "file", "dev": "block", "dir": "dir"}
_ATTR_OF_KIND = {v: k for k, v in _KIND_OF_ATTR.items()}


def _layer(source: ET.Element | None, fmt: str | None, declared_type: str | None = None) -> DiskLayer:
    """A layer from its ``<source>`` (or flat ``<backing>``) element."""
    if source is None:
        raise XmlError("a layer has no <source>")
    a = source.attrib
    path: str | None = None
    net: NetworkSource | None = None
    if "protocol" in a:
        kind, net = "network", _network(source)
    else:
        attr = next((x for x in _KIND_OF_ATTR if x in a), None)
        if attr is None:
            raise XmlError(f"<{source.tag}> has none of file=, dev=, dir=, protocol=")
        kind, path = _KIND_OF_ATTR[attr], a[attr]
    if declared_type is not None and declared_type != kind:
        wanted = "protocol=" if declared_type == "network" else f"{_ATTR_OF_KIND.get(declared_type, '?')}="
        raise XmlError(
            f"type={declared_type!r} but <{source.tag}> describes a {kind} source "
            f"(libvirt reads only {wanted} for type {declared_type!r}, and refuses the disk: "
            "'missing source information')"
        )
    return DiskLayer(
        kind,
        path=path,
        network=net,
        format=fmt,
        slice=_slice(source),
        data_file=_data_file(source),
        encryption=_get(source.find("encryption"), "format"),
    )


def _get(element: ET.Element | None, attr: str) -> str | None:
    return None if element is None else element.get(attr)


def _number(text: str | None, what: str, limit: int = 2**64 - 1) -> int | None:
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise XmlError(f"{what} {text!r} is not a number") from None
    if not 0 <= value <= limit:
        raise XmlError(f"{what} {value} outside 0..{limit}")
    return value


def _slice(source: ET.Element) -> tuple[int | None, int | None] | None:
    for piece in source.findall("slices/slice"):
        if piece.get("type") == "storage":
            return (_number(piece.get("offset"), "slice offset"), _number(piece.get("size"), "slice size"))
    return None


def _data_file(source: ET.Element) -> str | None:
    store = source.find("dataStore")
    return None if store is None else _get(store.find("source"), "file")


def _network(source: ET.Element) -> NetworkSource:
    hosts = tuple(
        Host(
            name=h.get("name"),
            port=_number(h.get("port"), "host port", 65535),
            transport=h.get("transport") or "tcp",
            socket=h.get("socket"),
        )
        for h in source.findall("host")
    )
    ssl = _get(source.find("ssl"), "verify")
    identity = source.find("identity")
    return NetworkSource(
        protocol=source.attrib["protocol"],
        name=source.get("name"),
        hosts=hosts,
        snapshot=_get(source.find("snapshot"), "name"),
        config=_get(source.find("config"), "file"),
        query=source.get("query"),
        ssl_verify=None if ssl is None else ssl == "yes",
        readahead=_number(_get(source.find("readahead"), "size"), "readahead size"),
        timeout=_number(_get(source.find("timeout"), "seconds"), "timeout seconds"),
        nfs_user=_get(identity, "user"),
        nfs_group=_get(identity, "group"),
    )


def _driver_format(element: ET.Element) -> str | None:
    return _get(element.find("driver"), "type")


def _format_type(element: ET.Element) -> str | None:
    return _get(element.find("format"), "type")


def _is_list(holder: ET.Element) -> bool:
    """Whether ``holder``'s ``<backingFile>`` is the proof of concept's list:
    ``<source>`` children only (a nested one holds a ``<driver>`` or a
    nested ``<backingFile>``)."""
    backing = holder.find("backingFile")
    if backing is None or len(backing) == 0:
        return False
    return all(child.tag == "source" for child in backing) and (len(backing) > 1 or "format" in backing[0].attrib)


def detect_layout(disk: ET.Element) -> str | None:
    """Which layout ``disk`` is in; None when it says nothing of backing files."""
    mirror = disk.find("mirror")
    if disk.find("backingStore") is not None or (mirror is not None and mirror.find("backingStore") is not None):
        return "backingstore"
    if mirror is not None and ("type" in mirror.attrib or "file" in mirror.attrib or "job" in mirror.attrib):
        return "backingstore"
    if disk.find("backing") is not None or (mirror is not None and mirror.find("backing") is not None):
        return "flat"
    mirror_source = None if mirror is None else mirror.find("source")
    if mirror_source is not None and "format" in mirror_source.attrib:
        return "flat"
    if _is_list(disk) or (mirror is not None and _is_list(mirror)):
        return "list"
    if disk.find("backingFile") is not None or mirror is not None:
        return "nested"
    return None


# -- per layout ---------------------------------------------------------------------------------


def _nested_chain(holder: ET.Element, top: DiskLayer) -> DiskChain:
    """The layers nested in ``holder`` as ``<backingFile>`` elements; an
    empty one says "has none"."""
    layers = [top]
    ends = False
    node = holder
    while (child := node.find("backingFile")) is not None:
        source = child.find("source")
        if source is None:  # the empty marker
            ends = True
            break
        layers.append(_layer(source, _driver_format(child)))
        node = child
    return DiskChain(tuple(layers), ends=ends)


def _store_chain(holder: ET.Element, top: DiskLayer) -> DiskChain:
    """The ``<backingStore>`` chain in ``holder``, read as libvirt reads it."""
    layers = [top]
    ends = False
    ignored = 0
    refused: list[tuple[int, str]] = []
    node = holder
    while (child := node.find("backingStore")) is not None:
        if "type" not in child.attrib:
            # libvirt: no type= is the terminator; anything inside is ignored.
            ends = True
            ignored = sum(1 for x in child.iter("backingStore") if x.find("source") is not None)
            break
        fmt = _format_type(child)
        if fmt is None:
            refused.append(
                (len(layers), "its <backingStore> has no <format> (libvirt: 'missing disk backing store format')")
            )
        layers.append(_layer(child.find("source"), fmt, child.get("type")))
        node = child
    return DiskChain(tuple(layers), ends=ends, ignored=ignored, refused=tuple(refused))


def _flat_chain(holder: ET.Element, top: DiskLayer) -> DiskChain:
    layers = [top]
    for backing in holder.findall("backing"):
        layers.append(_layer(backing, backing.get("format")))
    # The flat layout has no "has none" marker: it lists a whole chain, and a
    # network or directory layer ends what can be known offline.
    return DiskChain(tuple(layers), ends=layers[-1].type not in ("network", "dir"))


def _list_chain(holder: ET.Element, top: DiskLayer) -> DiskChain:
    backing = holder.find("backingFile")
    if backing is None:
        return DiskChain((top,), ends=False)
    layers = [top, *(_layer(s, s.get("format")) for s in backing.findall("source"))]
    # As flat: the list is the whole chain, a network or directory layer its known end.
    return DiskChain(tuple(layers), ends=layers[-1].type not in ("network", "dir"))


def _store_mirror(mirror_el: ET.Element) -> DiskChain:
    """libvirt's mirror: live (``<format>``, ``<source>``, chain) or old (attributes only)."""
    attr_format = mirror_el.get("format")
    source = mirror_el.find("source")
    if source is None:
        if "file" not in mirror_el.attrib:
            raise XmlError("<mirror> has neither file= nor <source>")
        top = DiskLayer("file", path=mirror_el.attrib["file"], format=attr_format)
        return DiskChain((top,), ends=False)
    fmt = _format_type(mirror_el)
    refused: list[tuple[int, str]] = []
    if attr_format is not None and fmt is not None and attr_format != fmt:
        refused.append((0, f"the <mirror> says format={attr_format!r} but holds <format type={fmt!r}>"))
    top = _layer(source, fmt or attr_format, mirror_el.get("type"))
    file_attr = mirror_el.get("file")
    if file_attr is not None and top.path is not None and file_attr != top.path:
        refused.append((0, f"the <mirror> says file={file_attr!r} but its <source> is {top.path!r}"))
    chain = _store_chain(mirror_el, top)
    return DiskChain(chain.layers, chain.ends, ignored=chain.ignored, refused=(*refused, *chain.refused))


def parse_disk(disk: ET.Element, layout: str | None = None) -> Disk:
    """Read a ``<disk>`` element.  ``layout`` None: find it from the elements."""
    if disk.tag != "disk":
        raise XmlError(f"expected <disk>, found <{disk.tag}>")
    layout = layout or detect_layout(disk)
    source = disk.find("source")
    fmt = _driver_format(disk)
    top = _layer(source, fmt, disk.get("type"))
    mirror_el = disk.find("mirror")
    mirror = None
    if layout == "nested":
        chain = _nested_chain(disk, top)
        if mirror_el is not None:
            mirror = _nested_chain(mirror_el, _layer(mirror_el.find("source"), _driver_format(mirror_el)))
    elif layout == "list":
        chain = _list_chain(disk, top)
        if mirror_el is not None:
            mirror = _list_chain(mirror_el, _layer(mirror_el.find("source"), _driver_format(mirror_el)))
    elif layout == "flat":
        chain = _flat_chain(disk, top)
        if mirror_el is not None:
            msource = mirror_el.find("source")
            mtop = _layer(msource, None if msource is None else msource.get("format"))
            mirror = _flat_chain(mirror_el, mtop)
    elif layout == "backingstore":
        chain = _store_chain(disk, top)
        if mirror_el is not None:
            mirror = _store_mirror(mirror_el)
    elif layout is None:
        chain = DiskChain((top,), ends=False, declared=False)
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


def read_disks(text: str | bytes) -> list[tuple[ET.Element, Disk | XmlError | None]]:
    """Parse XML text; each disk with its chain, or None for a disk with no
    local source to check (a network top, an empty CD-ROM), or the
    :class:`XmlError` that this disk alone cannot be read for."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise XmlError(f"not well-formed XML: {exc}") from None
    out: list[tuple[ET.Element, Disk | XmlError | None]] = []
    for element in find_disks(root):
        source = element.find("source")
        if source is None or not ({"file", "dev"} & set(source.attrib)):
            out.append((element, None))
            continue
        try:
            out.append((element, parse_disk(element)))
        except XmlError as exc:
            out.append((element, exc))
    return out
