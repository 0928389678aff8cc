"""A disk and its backing chain as libvirt-style XML, in four layouts.

* ``nested``: the first layout of the 2012 libvirt RFC (shared/seed): every
  layer below the top is a ``<backingFile>`` holding ``<driver name='qemu'
  type='FMT'/>`` and ``<source .../>``, nested; the mirror is ``<mirror>``
  with its own driver, source and nested chain.  A layer known to have no
  backing file carries an empty ``<backingFile/>`` (the convention of the
  proof of concept in the same thread: "has none", not "not looked at").
* ``flat``: the RFC's second layout: ``<backing file='...' format='...'/>``
  siblings after ``<source>``, in chain order; ``<mirror><source file=...
  format=.../><backing .../></mirror>``.
* ``list``: Daniel Berrange's proof of concept in the same thread: one
  ``<backingFile>`` holding a ``<source ... format=...>`` per backing layer,
  top to bottom; an empty ``<backingFile/>`` for "no backing file"; a mirror
  holds the same driver, source and list as the disk.  The proof of concept
  had file and block sources only; network sources are written as in the
  other layouts (``protocol= name= format=`` and ``<host>`` children).
* ``backingstore``: what libvirt reads: nested ``<backingStore type=>`` with
  ``<format type=>`` and ``<source>``, an empty ``<backingStore/>`` for "has
  none", and a mirror as libvirt writes a copy job (``<mirror type= file=
  format= job='copy'>`` with ``<format>``, ``<source>`` and its chain).

A layer's source is ``file=`` (a regular file), ``dev=`` (a block device),
``dir=`` (a directory) or ``protocol= name=`` with ``<host>`` children (a
network source), with what libvirt also keeps: ``<ssl>``, ``<readahead>``,
``<timeout>``, ``<identity>``, ``<slices>``, ``<encryption>`` and
``<dataStore>``.  The XML is built with ElementTree and written by one small
writer, :func:`serialize`, as libvirt writes it: single quotes, ``/>`` with
no space, two-space indent, ``'`` ``"`` ``&`` ``<`` ``>`` escaped, so that a
diff against ``virsh dumpxml`` shows only real differences.

What libvirt would not read as written is refused (:class:`XmlEmitError`,
with libvirt's own reason) or written with a note (:class:`Rendering`).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import NamedTuple

from imgchain.backing_name import NetworkSource
from imgchain.disk import Disk, DiskChain, DiskLayer
from imgchain.errors import XmlEmitError, plain

__all__ = ["LAYOUTS", "Rendering", "XmlEmitError", "disk_element", "render", "serialize", "terminal_text", "to_xml"]

LAYOUTS = ("nested", "flat", "list", "backingstore")

_PATH_ATTR = {"file": "file", "block": "dev", "dir": "dir"}

#: The network protocols libvirt 9.0's schema has a disk source for (its
#: parser also knows ssh).
LIBVIRT_PROTOCOLS = frozenset(
    ("nbd", "gluster", "rbd", "iscsi", "http", "https", "ftp", "ftps", "sheepdog", "tftp", "vxhs", "nfs")
)

#: libvirt's kbase page on backing chains, which its own refusal names.
_KBASE = "https://libvirt.org/kbase/backing_chains.html"


class Rendering(NamedTuple):
    """The XML text, and the notes and warnings for stderr (each one line,
    ``note: ...`` or ``warning: ...``)."""

    text: str
    notes: tuple[str, ...]


# -- what XML (and libvirt) can carry -----------------------------------------------------------


def _carried(text: str) -> bool:
    """Whether libvirt carries ``text`` through its XML unchanged: no C0
    control character (XML 1.0 has none but tab, newline and CR, and libvirt
    writes those raw, so that its next parse turns them into spaces), no
    byte that is not UTF-8 (kept as a lone surrogate), no U+FFFE/U+FFFF.
    A no-break or zero-width space, or a format character, is carried: it is
    escaped only where it would reach a terminal (:func:`terminal_text`)."""
    for c in text:
        cp = ord(c)
        if cp < 0x20 or 0xD800 <= cp <= 0xDFFF or cp in (0xFFFE, 0xFFFF):
            return False
    return True


def terminal_text(text: str) -> str:
    """XML text for a terminal: every character that is not plain printable
    text (outside the lines' own newlines) as a character reference, which
    is the same XML: ``&#xa0;`` for a no-break space, ``&#x200b;`` ..."""
    if plain(text.replace("\n", "")):
        return text
    return "".join(c if c == "\n" or plain(c) else f"&#x{ord(c):x};" for c in text)


_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "'": "&apos;", '"': "&quot;"})

#: Elements libvirt writes open and closed even when empty.
_OPEN_CLOSE = frozenset({"encryption"})


def serialize(element: ET.Element) -> str:
    """``element`` as libvirt writes XML (virBufferEscapeString): single
    quotes, the five XML characters escaped, ``/>`` with no space, two
    spaces of indent per level, one element a line."""
    out: list[str] = []
    _serialize(element, 0, out)
    return "".join(out)


def _serialize(element: ET.Element, depth: int, out: list[str]) -> None:
    pad = "  " * depth
    attrs = "".join(f" {k}='{v.translate(_ESCAPES)}'" for k, v in element.attrib.items())
    if len(element):
        out.append(f"{pad}<{element.tag}{attrs}>\n")
        for child in element:
            _serialize(child, depth + 1, out)
        out.append(f"{pad}</{element.tag}>\n")
    elif element.tag in _OPEN_CLOSE:
        out.append(f"{pad}<{element.tag}{attrs}>\n{pad}</{element.tag}>\n")
    else:
        out.append(f"{pad}<{element.tag}{attrs}/>\n")


def _sub(parent: ET.Element, tag: str, **attrs: str | None) -> ET.Element:
    for value in attrs.values():
        if value is not None and not _carried(value):
            raise XmlEmitError(
                f"{value!r} holds characters that libvirt's XML cannot carry "
                "(control characters such as a tab or newline, or bytes that are not UTF-8)"
            )
    return ET.SubElement(parent, tag, {k: v for k, v in attrs.items() if v is not None})


def _where(layer: DiskLayer) -> str:
    if layer.network is None:
        return repr(layer.path)
    net = layer.network
    hosts = ",".join(
        f"unix:{h.socket}" if h.transport == "unix" else f"{h.name}" + ("" if h.port is None else f":{h.port}")
        for h in net.hosts
    )
    return repr(f"{net.protocol}://{hosts}/{net.name or ''}")


# -- libvirt's schema patterns (for notes only: libvirt's parser reads all of these) ---------------

_DNS_NAME = re.compile(r"[a-zA-Z0-9.\-]+")
_IPV6ISH = re.compile(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*")
_GENERIC_NAME = re.compile(r"[a-zA-Z0-9_+\-]+")
_ABS_FILE_PATH = re.compile(r"(/|[a-zA-Z]:\\).+", re.DOTALL)


def _schema_problems(layer: DiskLayer) -> list[str]:
    """What libvirt 9.0's schema (``virt-xml-validate``) refuses in a layer
    that its parser reads."""
    out = []
    if layer.path is not None and not _ABS_FILE_PATH.fullmatch(layer.path):
        out.append(f"the relative path {layer.path!r}")
    net = layer.network
    if net is None:
        return out
    if net.protocol not in LIBVIRT_PROTOCOLS:
        out.append(f"protocol {net.protocol!r}")
    for host in net.hosts:
        if host.transport == "unix":
            if host.socket is not None and not _ABS_FILE_PATH.fullmatch(host.socket):
                out.append(f"the relative socket {host.socket!r}")
        elif host.name is not None and not (_DNS_NAME.fullmatch(host.name) or _IPV6ISH.fullmatch(host.name)):
            out.append(f"the host name {host.name!r}")
    if net.snapshot is not None and not _GENERIC_NAME.fullmatch(net.snapshot):
        out.append(f"the snapshot name {net.snapshot!r}")
    if net.config is not None and not _ABS_FILE_PATH.fullmatch(net.config):
        out.append(f"the relative config file {net.config!r}")
    if net.protocol == "nfs" and net.nfs_user is None and net.nfs_group is None:
        out.append("an nfs source without <identity> (libvirt drops an empty one)")
    return out


# -- sources, shared by every layout ------------------------------------------------------------


def _network_children(parent: ET.Element, net: NetworkSource) -> None:
    """libvirt's order (virDomainDiskSourceFormatNetwork): hosts, snapshot,
    config, identity, ssl, readahead, timeout."""
    for host in net.hosts:
        _sub(
            parent,
            "host",
            name=host.name,
            port=None if host.port is None else str(host.port),
            transport=None if host.transport == "tcp" else host.transport,
            socket=host.socket,
        )
    if net.snapshot is not None:
        _sub(parent, "snapshot", name=net.snapshot)
    if net.config is not None:
        _sub(parent, "config", file=net.config)
    if net.protocol == "nfs" and (net.nfs_user is not None or net.nfs_group is not None):
        # (libvirt drops an empty one, although its schema requires one)
        _sub(parent, "identity", user=net.nfs_user, group=net.nfs_group)
    if net.ssl_verify is not None:
        _sub(parent, "ssl", verify="yes" if net.ssl_verify else "no")
    if net.readahead is not None:
        _sub(parent, "readahead", size=str(net.readahead))
    if net.timeout is not None:
        _sub(parent, "timeout", seconds=str(net.timeout))


def _source(parent: ET.Element, layer: DiskLayer, tag: str = "source", **extra: str | None) -> ET.Element:
    """``<source>`` (or ``<backing>``) for a layer, with ``extra`` attributes
    and every child libvirt writes for it (slices, encryption, data store)."""
    if layer.network is None:
        element = _sub(parent, tag, **{_PATH_ATTR[layer.type]: layer.path}, **extra)
    else:
        net = layer.network
        element = _sub(parent, tag, protocol=net.protocol, name=net.name, query=net.query, **extra)
        _network_children(element, net)
    if layer.slice is not None:
        offset, size = layer.slice
        slices = _sub(element, "slices")
        _sub(slices, "slice", type="storage", offset=_num(offset), size=_num(size))
    if layer.encryption is not None:
        _sub(element, "encryption", format=layer.encryption)
    if layer.data_file is not None:
        store = _sub(element, "dataStore", type="file")
        _sub(store, "format", type="raw")
        _sub(store, "source", file=layer.data_file)
    return element


def _num(value: int | None) -> str | None:
    return None if value is None else str(value)


def _driver(parent: ET.Element, layer: DiskLayer) -> None:
    if layer.format is not None:
        _sub(parent, "driver", name="qemu", type=layer.format)


# -- the checks every layout makes ----------------------------------------------------------------


class _Writer:
    def __init__(self, layout: str, allow_probed: bool) -> None:
        self.layout = layout
        self.allow_probed = allow_probed
        self.notes: list[str] = []

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def layers(self, chain: DiskChain) -> tuple[tuple[DiskLayer, ...], bool]:
        """The layers of ``chain`` to write, and whether its end is known,
        after the checks: a probed format is never declared (libvirt's own
        refusal, unless allowed); in ``backingstore``, what libvirt's parser
        refuses is refused, and a name with inline credentials ends the
        chain, as libvirt adds no layer for it."""
        layers = list(chain.layers)
        ends = chain.ends
        for i, layer in enumerate(layers):
            self._content_note(layer)
            if i == 0:
                continue
            overlay = layers[i - 1]
            if self.layout == "backingstore":
                if layer.refusal is not None:
                    raise XmlEmitError(
                        f"libvirt refuses the backing name {layer.name!r} of {overlay.path!r}: {layer.refusal}; "
                        "it cannot start a VM on this chain (the nested, flat and list layouts can say it)"
                    )
                if layer.network is not None and layer.network.inline_auth:
                    self.note(
                        f"note: the backing name of {overlay.path!r} holds credentials, and libvirt adds no "
                        'backing layer for it (its parser: "Libvirt doesn\'t handle inline authentication"; '
                        "the backing file would not be usable for VM usage); nor does this XML"
                    )
                    return tuple(layers[:i]), False
                if layer.network is not None and layer.network.has_credentials:
                    self.note(f"note: credentials in the backing name of {overlay.path!r} are not written")
                if layer.format is None or (layer.network is not None and layer.probed):
                    self._probed(overlay, layer, "libvirt cannot probe a network layer")
                for problem in _schema_problems(layer):
                    self.note(
                        f"note: libvirt's parser reads {problem}, but its schema refuses it: "
                        "virt-xml-validate will refuse this XML"
                    )
            if layer.probed and layer.has_backing and layer.network is None:
                self._probed(overlay, layer, "it has a backing file of its own")
        if self.layout == "backingstore":
            for problem in _schema_problems(layers[0]):
                self.note(
                    f"note: libvirt's parser reads {problem}, but its schema refuses it: "
                    "virt-xml-validate will refuse this XML"
                )
            if any(x.data_file is not None for x in layers):
                self.note("note: libvirt 9.0 ignores <dataStore> (newer libvirt reads it)")
        return tuple(layers), ends

    def _probed(self, overlay: DiskLayer, layer: DiskLayer, why: str) -> None:
        fmt = layer.format or "unknown"
        if self.allow_probed and layer.format is not None:
            self.note(
                f"warning: the format of backing layer {_where(layer)} ({fmt}) was probed, not recorded in "
                f"{overlay.path!r}: the XML declares it, and libvirt will trust it"
            )
            return
        name = layer.name if layer.name is not None else _where(layer)[1:-1]
        raise XmlEmitError(
            f"format of backing image {name!r} of image {overlay.path!r} was not specified in the image "
            f"metadata (libvirt refuses it: {why}; see {_KBASE}); record it: "
            f"qemu-img rebase -u -b {name!r} -F FORMAT {overlay.path!r}"
            + ("" if layer.format is None else f", or write the probed {fmt} with --allow-probed")
        )

    def _content_note(self, layer: DiskLayer) -> None:
        if layer.content is not None and layer.format == "raw" and layer.content != "raw":
            self.note(
                f"note: {_where(layer)} is declared raw, but its content looks like {layer.content}: "
                f"the XML declares raw, the safe declaration (never open it as {layer.content})"
            )


# -- nested (RFC layout 1) -------------------------------------------------------------------


def _nested_below(parent: ET.Element, layers: tuple[DiskLayer, ...], ends: bool) -> None:
    for layer in layers[1:]:
        parent = _sub(parent, "backingFile")
        _driver(parent, layer)
        _source(parent, layer)
    if ends:
        _sub(parent, "backingFile")


def _top_then(
    w: _Writer, disk: Disk, root: ET.Element, below: Callable[[ET.Element, tuple[DiskLayer, ...], bool], None]
) -> None:
    """The top layer in ``root`` and in a ``<mirror>``, each followed by its
    backing layers as ``below`` writes them (the nested and list layouts)."""
    layers, ends = w.layers(disk.chain)
    _driver(root, layers[0])
    _source(root, layers[0])
    if disk.mirror is not None:
        mlayers, mends = w.layers(disk.mirror)
        mirror = _sub(root, "mirror")
        _driver(mirror, mlayers[0])
        _source(mirror, mlayers[0])
        below(mirror, mlayers, mends)
    below(root, layers, ends)


def _nested(w: _Writer, disk: Disk, root: ET.Element) -> None:
    _top_then(w, disk, root, _nested_below)


# -- flat (RFC layout 2) -----------------------------------------------------------------------


def _flat(w: _Writer, disk: Disk, root: ET.Element) -> None:
    layers, _ = w.layers(disk.chain)
    _driver(root, layers[0])
    _source(root, layers[0])
    if disk.mirror is not None:
        mlayers, _ = w.layers(disk.mirror)
        mirror = _sub(root, "mirror")
        _source(mirror, mlayers[0], format=mlayers[0].format)
        for layer in mlayers[1:]:
            _source(mirror, layer, "backing", format=layer.format)
    for layer in layers[1:]:
        _source(root, layer, "backing", format=layer.format)


# -- list (the RFC thread's proof of concept) ---------------------------------------------------------


def _list_below(parent: ET.Element, layers: tuple[DiskLayer, ...], ends: bool) -> None:
    if len(layers) > 1:
        holder = _sub(parent, "backingFile")
        for layer in layers[1:]:
            _source(holder, layer, format=layer.format)
    elif ends:
        _sub(parent, "backingFile")


def _list(w: _Writer, disk: Disk, root: ET.Element) -> None:
    _top_then(w, disk, root, _list_below)


# -- backingStore (libvirt) -------------------------------------------------------------------


def _backing_store(parent: ET.Element, layers: tuple[DiskLayer, ...], ends: bool) -> None:
    for layer in layers[1:]:
        parent = _sub(parent, "backingStore", type=layer.type)
        _sub(parent, "format", type=layer.format)
        _source(parent, layer)
    if ends:
        _sub(parent, "backingStore")


def _backingstore(w: _Writer, disk: Disk, root: ET.Element) -> None:
    layers, ends = w.layers(disk.chain)
    _driver(root, layers[0])
    _source(root, layers[0])
    _backing_store(root, layers, ends)
    if disk.mirror is not None:
        # As libvirt writes a copy job (virDomainDiskDefFormatMirror).
        mlayers, mends = w.layers(disk.mirror)
        top = mlayers[0]
        attrs: dict[str, str | None] = {"type": top.type}
        if top.type == "file":
            attrs.update(file=top.path, format=top.format)
        mirror = _sub(root, "mirror", **attrs, job="copy")
        if top.format is not None:
            _sub(mirror, "format", type=top.format)
        _source(mirror, top)
        _backing_store(mirror, mlayers, mends)


_LAYOUT = {"nested": _nested, "flat": _flat, "list": _list, "backingstore": _backingstore}


def _build(disk: Disk, layout: str, allow_probed: bool) -> tuple[ET.Element, _Writer]:
    if layout not in _LAYOUT:
        raise ValueError(f"unknown layout {layout!r}")
    if disk.chain.top.type not in ("file", "block"):
        raise ValueError("the top of a disk must be a file or a block device")
    writer = _Writer(layout, allow_probed)
    root = ET.Element("disk", {"type": disk.chain.top.type, "device": "disk"})
    _LAYOUT[layout](writer, disk, root)
    _sub(root, "target", dev=disk.target, bus=disk.bus)
    return root, writer


def disk_element(disk: Disk, layout: str = "backingstore", *, allow_probed: bool = False) -> ET.Element:
    """The ``<disk>`` element of ``disk`` in ``layout``."""
    return _build(disk, layout, allow_probed)[0]


def render(disk: Disk, layout: str = "backingstore", *, allow_probed: bool = False) -> Rendering:
    """``disk`` as XML text in ``layout``, with the notes for stderr.
    ``allow_probed`` writes a probed backing format that libvirt would
    refuse to probe, with a warning, instead of refusing."""
    root, writer = _build(disk, layout, allow_probed)
    return Rendering(serialize(root), tuple(writer.notes))


def to_xml(disk: Disk, layout: str = "backingstore", *, allow_probed: bool = False) -> str:
    """``disk`` as XML text (no XML declaration)."""
    return render(disk, layout, allow_probed=allow_probed).text
