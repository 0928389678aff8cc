"""A disk and its backing chain as libvirt-style XML, in three layouts.

* ``nested``: the first layout of the 2012 libvirt RFC (shared/seed): every
  layer below the top is a ``<backingFile>`` holding ``<driver name='qemu'
  type='FMT'/>`` and ``<source .../>``, nested; the mirror is ``<mirror>``
  with its own driver, source and nested chain.  A layer known to have no
  backing file carries an empty ``<backingFile/>`` (the convention of the
  proof of concept in the same thread: "has none", not "not looked at").
* ``flat``: the RFC's second layout: ``<backing file='...' format='...'/>``
  siblings after ``<source>``, in chain order; ``<mirror><source file=...
  format=.../><backing .../></mirror>``.
* ``backingstore``: what libvirt shipped: nested ``<backingStore type=
  index=>`` with ``<format type=>`` and ``<source>``, an empty
  ``<backingStore/>`` for "has none", and ``<mirror type= job='copy'>``.

A layer's source is ``file=`` (a regular file), ``dev=`` (a block device),
``dir=`` (a directory) or ``protocol= name=`` with ``<host>`` children (a
network source).  In the nested and flat layouts, which the RFC wrote for
files only, the source's attribute tells the type; backingstore also says it
in ``type=``.  The XML is built with ElementTree, never by formatting strings.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from imgchain.backing_name import NetworkSource
from imgchain.disk import Disk, DiskChain, DiskLayer
from imgchain.errors import XmlEmitError, plain

__all__ = ["LAYOUTS", "XmlEmitError", "disk_element", "to_xml"]

LAYOUTS = ("nested", "flat", "backingstore")

_PATH_ATTR = {"file": "file", "block": "dev", "dir": "dir"}


def _sub(parent: ET.Element, tag: str, **attrs: str | None) -> ET.Element:
    for value in attrs.values():
        if value is not None and not _writable(value):
            raise XmlEmitError(
                f"{value!r} holds characters that XML cannot carry and a terminal must not see "
                "(control characters, or bytes that are not UTF-8)"
            )
    return ET.SubElement(parent, tag, {k: v for k, v in attrs.items() if v is not None})


def _writable(text: str) -> bool:
    """Printable text with no undecodable bytes (kept as lone surrogates):
    no newline, CR, tab, escape or other control or format character, which
    XML would carry (as ``&#10;`` ...) to whatever reads the attribute next."""
    return plain(text)


def _host_elements(parent: ET.Element, net: NetworkSource) -> None:
    for host in net.hosts:
        _sub(
            parent,
            "host",
            name=host.name,
            port=None if host.port is None else str(host.port),
            transport=None if host.transport == "tcp" else host.transport,
            socket=host.socket,
        )


def _network_children(parent: ET.Element, net: NetworkSource) -> None:
    _host_elements(parent, net)
    if net.protocol == "nfs":
        _sub(parent, "identity")  # libvirt requires one (its user and group are optional)
    if net.snapshot is not None:
        _sub(parent, "snapshot", name=net.snapshot)
    if net.config is not None:
        _sub(parent, "config", file=net.config)


def _source(parent: ET.Element, layer: DiskLayer, tag: str = "source", **extra: str | None) -> ET.Element:
    """``<source>`` (or ``<backing>``) for a layer, with ``extra`` attributes."""
    if layer.network is None:
        return _sub(parent, tag, **{_PATH_ATTR[layer.type]: layer.path}, **extra)
    net = layer.network
    element = _sub(parent, tag, protocol=net.protocol, name=net.name, query=net.query, **extra)
    _network_children(element, net)
    return element


def _driver(parent: ET.Element, layer: DiskLayer) -> None:
    if layer.format is not None:
        _sub(parent, "driver", name="qemu", type=layer.format)


# -- nested (RFC layout 1) -------------------------------------------------------------------


def _nested_below(parent: ET.Element, chain: DiskChain, start: int) -> None:
    """Layers ``start``.. of ``chain`` nested in ``parent``; the marker after
    the last one when its end is known."""
    for layer in chain.layers[start:]:
        parent = _sub(parent, "backingFile")
        _driver(parent, layer)
        _source(parent, layer)
    if chain.ends:
        _sub(parent, "backingFile")


def _nested(disk: Disk, root: ET.Element) -> None:
    _driver(root, disk.chain.top)
    _source(root, disk.chain.top)
    if disk.mirror is not None:
        mirror = _sub(root, "mirror")
        _driver(mirror, disk.mirror.top)
        _source(mirror, disk.mirror.top)
        _nested_below(mirror, disk.mirror, 1)
    _nested_below(root, disk.chain, 1)


# -- flat (RFC layout 2) -----------------------------------------------------------------------


def _flat(disk: Disk, root: ET.Element) -> None:
    _driver(root, disk.chain.top)
    _source(root, disk.chain.top)
    if disk.mirror is not None:
        mirror = _sub(root, "mirror")
        _source(mirror, disk.mirror.top, format=disk.mirror.top.format)
        for layer in disk.mirror.layers[1:]:
            _source(mirror, layer, "backing", format=layer.format)
    for layer in disk.chain.layers[1:]:
        _source(root, layer, "backing", format=layer.format)


# -- backingStore (libvirt) -------------------------------------------------------------------


def _format(parent: ET.Element, layer: DiskLayer, *, required: bool = True) -> None:
    if layer.format is None and not required:
        return
    if layer.format is None:
        # libvirt's schema requires a format here, and libvirt refuses a chain
        # whose backing format is neither recorded nor safely probed.
        where = layer.path if layer.network is None else f"{layer.network.protocol}:{layer.network.name or ''}"
        raise XmlEmitError(
            f"the format of backing layer {where!r} is not recorded in its overlay and cannot be probed offline; "
            "<backingStore> needs one (the nested and flat layouts can leave it out)"
        )
    _sub(parent, "format", type=layer.format)


#: The network protocols libvirt 9.0's schema has a disk source for.
LIBVIRT_PROTOCOLS = frozenset(
    ("nbd", "gluster", "rbd", "iscsi", "http", "https", "ftp", "ftps", "sheepdog", "tftp", "vxhs", "nfs")
)


def _backing_store(parent: ET.Element, chain: DiskChain, first_index: int) -> int:
    index = first_index
    for layer in chain.layers[1:]:
        if layer.network is not None and layer.network.protocol not in LIBVIRT_PROTOCOLS:
            raise XmlEmitError(
                f"libvirt 9.0 has no {layer.network.protocol} disk source for <backingStore> "
                "(the nested and flat layouts can say it)"
            )
        parent = _sub(parent, "backingStore", type=layer.type, index=str(index))
        _format(parent, layer)
        _source(parent, layer)
        index += 1
    if chain.ends:
        _sub(parent, "backingStore")
    return index


def _backingstore(disk: Disk, root: ET.Element) -> None:
    _driver(root, disk.chain.top)
    _source(root, disk.chain.top)
    next_index = _backing_store(root, disk.chain, 1)
    if disk.mirror is not None:
        mirror = _sub(root, "mirror", type=disk.mirror.top.type, job="copy")
        _format(mirror, disk.mirror.top, required=False)
        _source(mirror, disk.mirror.top)
        _backing_store(mirror, disk.mirror, next_index)


_LAYOUT = {"nested": _nested, "flat": _flat, "backingstore": _backingstore}


def disk_element(disk: Disk, layout: str = "backingstore") -> ET.Element:
    """The ``<disk>`` element of ``disk`` in ``layout``."""
    if disk.chain.top.type not in ("file", "block"):
        raise ValueError("the top of a disk must be a file or a block device")
    root = ET.Element("disk", {"type": disk.chain.top.type, "device": "disk"})
    _LAYOUT[layout](disk, root)
    _sub(root, "target", dev=disk.target, bus=disk.bus)
    return root


def to_xml(disk: Disk, layout: str = "backingstore") -> str:
    """``disk`` as indented XML text (no XML declaration)."""
    root = disk_element(disk, layout)
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"
