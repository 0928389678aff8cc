"""What qemu 7.2 opens for a backing name: every local file, directory and
socket, at any depth of a ``json:`` option tree.

:mod:`imgchain.backing_name` reads a name as libvirt does, which reduces a
``json:`` name to its ``file`` child.  qemu reads the whole tree, so a name
can reach much further: a format node's own ``backing`` or ``data-file``, a
``blkdebug`` config file, ``quorum`` children, a ``vvfat`` directory, an NBD
unix socket.  This module models what qemu 7.2 does with a name, from
``block.c`` (``bdrv_open_inherit``, ``parse_json_protocol``,
``bdrv_fill_options``, ``bdrv_find_protocol``, ``bdrv_open_backing_file``,
``bdrv_inherited_options``), ``qapi/block-core.json`` (``BlockdevOptions``
and each ``BlockdevOptionsXxx``) and each driver's ``bdrv_parse_filename``
in ``block/*.c``.  Pure: a string goes in, a frozen value comes out, nothing
is opened.

How qemu reads a name::

    json:{...}        parsed, then flattened (qdict_flatten): {"a":{"b":1}} and
                      {"a.b":1} are the same option, lists become "a.0", "a.1"
    PROTO:REST        the driver whose protocol_name is PROTO parses REST
                      (nbd:, fat:, blkdebug:, gluster+unix://, ...); qemu
                      first opens the literal name O_NONBLOCK to see whether
                      it is a host block device or CD-ROM (find_hdev_driver)
    anything else     a local path (relative to the overlay's folder)

A recorded backing format (the overlay's, ``format=``) wins over a
``json:`` name's own top-level ``driver`` (``qdict_join`` without
overwrite): ``json:{"driver":"raw",...}`` recorded as qcow2 is opened as
qcow2.

Fail closed: every driver has a whitelist of option keys, each either a
child node, a local file, a directory, a unix socket, part of a network
endpoint, or a harmless scalar.  Anything the table does not know (a
driver, a key, a child given as a node-name string, a non-string path,
duplicated keys after flattening, malformed JSON, nesting deeper than
:data:`MAX_DEPTH`) raises :class:`imgchain.errors.BackingNameError`.

Out of reach here, and said so: files qemu's libraries read by themselves
(librados's default ``ceph.conf``, libssh's ``known_hosts``, curl's CA
bundle) and the temporary file ``vvfat`` writes for ``rw``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import NamedTuple
from urllib.parse import unquote

from imgchain.errors import BackingNameError
from imgchain.names import json_object, protocol_of

__all__ = ["DRIVERS", "MAX_DEPTH", "MAX_NAME_LENGTH", "PROTOCOLS", "QemuName", "Target", "qemu_opens"]

#: Nodes nested deeper than this (json: objects, or children of children)
#: are refused; qemu has no limit, but no sane name comes near it.
MAX_DEPTH = 32

#: Names longer than this are refused.  qcow2 stores at most 1023 bytes and
#: qemu's bs->filename holds 4096; the cap keeps the cost of hostile names
#: bounded (everything here is linear in the name's length).
MAX_NAME_LENGTH = 65536


class Target(NamedTuple):
    """One local thing qemu opens for a name."""

    #: "file", "dir" (vvfat's directory, an NVMe device's sysfs folder) or "socket".
    kind: str
    #: As qemu opens it; relative paths are not made absolute (see ``relative_to``).
    path: str
    #: The flattened option key it came from ("backing.file.filename"), "" for a
    #: plain path, "x-image" for a name given in a string; "KEY:INNER" for an
    #: option inside a json: name given in the string option KEY.
    option: str
    #: "image" (the layer itself), "backing", "data-file", "child" (quorum
    #: children, blkverify's test image), "extent" (vmdk), "target"
    #: (copy-before-write), "log", "config", "dir", "socket", "device",
    #: or "device-probe" (the literal protocol name, opened O_NONBLOCK by
    #: find_hdev_driver and used only if it is a block device or CD-ROM).
    role: str
    #: qemu may write to it (vvfat rw, a copy-before-write target, a log).
    writable: bool
    #: The format driver that reads this file's bytes, None where there is
    #: none or qemu probes the format (see ``follows_backing``).
    format: str | None
    #: "overlay": a relative path is joined to the overlay's folder (a plain
    #: backing path only); "cwd": opened from qemu's working folder.
    relative_to: str
    #: qemu reads this file as an image and follows the backing file named
    #: in its header (a probed image, or one read by qcow/qcow2/qed/vmdk/
    #: parallels without a ``backing`` option overriding it).
    follows_backing: bool


class QemuName(NamedTuple):
    targets: tuple[Target, ...]
    #: One short line per network endpoint ("nbd tcp example.org:10809"),
    #: credentials left out.
    network: tuple[str, ...]
    #: The driver of the top node, None for a plain path or a probed json: name.
    top_driver: str | None


# --------------------------------------------------------------------------
# The driver table (qemu 7.2, qapi/block-core.json BlockdevOptions and
# block/*.c).  Option kinds:

_SCALAR = "scalar"  # harmless: a number, a flag, a mode, a secret's id, a remote path
_NET = "net"  # part of a network endpoint (host, port, url, ...)
_FILE = "file"  # a local file qemu opens
_DIR = "dir"  # a local directory qemu reads (vvfat)
_SOCKET = "socket"  # server.path / path: a unix socket, unless abstract/inet (decided per driver)
_NAME = "name"  # a qemu file name string, parsed as a name of its own (blkdebug x-image)


class _Driver(NamedTuple):
    #: "format" (reads its file child's bytes), "filter" (passes its primary
    #: child through), "protocol" (opens something itself).
    kind: str
    #: child option -> role ("" = keeps the parent's role, the primary child).
    children: Mapping[str, str]
    #: array child option ("children", "extents") -> role.
    arrays: Mapping[str, str]
    #: flattened scalar key, indices written "N" -> option kind.
    keys: Mapping[str, str]
    #: the format follows the backing file of its header (supports_backing).
    backing: bool = False


#: Keys every node takes (bdrv_runtime_opts and BlockdevOptions' base).
_COMMON = frozenset(
    {
        "node-name",
        "discard",
        "cache.direct",
        "cache.no-flush",
        "read-only",
        "auto-read-only",
        "force-share",
        "detect-zeroes",
    }
)

_INET = ("host", "port", "numeric", "to", "ipv4", "ipv6", "keep-alive", "mptcp")
#: SocketAddress: inet, unix (path, abstract, tight), vsock (cid, port), fd (str).
_SOCKET_ADDRESS = ("type", *_INET, "path", "abstract", "tight", "cid", "str")


def _keys(kind: str, *names: str) -> dict[str, str]:
    return dict.fromkeys(names, kind)


def _format(*scalars: str, backing: bool = False, children: Mapping[str, str] | None = None) -> _Driver:
    kids = {"file": ""}
    if backing:
        kids["backing"] = "backing"
    kids.update(children or {})
    return _Driver("format", kids, {}, _keys(_SCALAR, *scalars), backing)


def _filter(*scalars: str, child: str = "file", extra: Mapping[str, str] | None = None) -> _Driver:
    return _Driver("filter", {child: "", **(extra or {})}, {}, _keys(_SCALAR, *scalars))


_FILE_OPTS = {
    "filename": _FILE,
    **_keys(_SCALAR, "aio", "aio-max-batch", "locking", "pr-manager", "drop-cache", "x-check-cache-dropped"),
}

_CURL = _keys(_SCALAR, "readahead", "timeout", "username", "password-secret", "proxy-username", "proxy-password-secret")
_QCOW2_OVERLAP = (
    "template",
    "main-header",
    "active-l1",
    "active-l2",
    "refcount-table",
    "refcount-block",
    "snapshot-table",
    "inactive-l1",
    "inactive-l2",
    "bitmap-directory",
)

DRIVERS: Mapping[str, _Driver] = {
    # formats
    "raw": _format("offset", "size"),
    "qcow2": _format(
        "lazy-refcounts",
        "pass-discard-request",
        "pass-discard-snapshot",
        "pass-discard-other",
        "overlap-check",
        *(f"overlap-check.{k}" for k in _QCOW2_OVERLAP),
        "cache-size",
        "l2-cache-size",
        "l2-cache-entry-size",
        "refcount-cache-size",
        "cache-clean-interval",
        "encrypt.format",
        "encrypt.key-secret",
        backing=True,
        children={"data-file": "data-file"},
    ),
    "qcow": _format("encrypt.format", "encrypt.key-secret", backing=True),
    "qed": _format(backing=True),
    "vmdk": _Driver("format", {"file": "", "backing": "backing"}, {"extents": "extent"}, {}, True),
    "parallels": _format(backing=True),
    "vdi": _format(),
    "vhdx": _format(),
    "vpc": _format(),
    "bochs": _format(),
    "cloop": _format(),
    "dmg": _format(),
    "luks": _format("key-secret"),
    # filters and drivers with children
    "throttle": _filter("throttle-group"),
    "copy-on-read": _filter("bottom"),
    "compress": _filter(),
    "preallocate": _filter("prealloc-align", "prealloc-size"),
    "replication": _filter("mode", "top-id"),
    "snapshot-access": _filter(),
    "copy-before-write": _filter(
        "bitmap.node", "bitmap.name", "on-cbw-error", "cbw-timeout", extra={"target": "target"}
    ),
    "blklogwrites": _filter("log-sector-size", "log-append", "log-super-update-interval", extra={"log": "log"}),
    "blkreplay": _filter(child="image"),
    "blkdebug": _Driver(
        "filter",
        {"image": ""},
        {},
        {
            "config": _FILE,
            "x-image": _NAME,
            **_keys(
                _SCALAR,
                "align",
                "max-transfer",
                "opt-write-zero",
                "max-write-zero",
                "opt-discard",
                "max-discard",
                *(
                    f"inject-error.N.{k}"
                    for k in ("event", "state", "iotype", "errno", "sector", "once", "immediately")
                ),
                *(f"set-state.N.{k}" for k in ("event", "state", "new-state")),
                "take-child-perms.N",
                "unshare-child-perms.N",
            ),
        },
    ),
    "blkverify": _Driver("filter", {"raw": "", "test": "child"}, {}, {"x-raw": _NAME, "x-image": _NAME}),
    "quorum": _Driver(
        "filter",
        {},
        {"children": "child"},
        _keys(_SCALAR, "vote-threshold", "blkverify", "rewrite-corrupted", "read-pattern"),
    ),
    # protocols
    "file": _Driver("protocol", {}, {}, _FILE_OPTS),
    "host_device": _Driver("protocol", {}, {}, _FILE_OPTS),
    "host_cdrom": _Driver("protocol", {}, {}, _FILE_OPTS),
    "nbd": _Driver(
        "protocol",
        {},
        {},
        {
            **{f"server.{k}": _NET for k in _SOCKET_ADDRESS},
            "server.path": _SOCKET,
            "path": _SOCKET,
            **_keys(_NET, "host", "port"),
            **_keys(
                _SCALAR, "export", "tls-creds", "tls-hostname", "x-dirty-bitmap", "reconnect-delay", "open-timeout"
            ),
        },
    ),
    "nfs": _Driver(
        "protocol",
        {},
        {},
        {
            **_keys(_NET, "server.type", "server.host"),
            **_keys(_SCALAR, "path", "user", "group", "tcp-syn-count", "readahead-size", "page-cache-size", "debug"),
        },
    ),
    "ssh": _Driver(
        "protocol",
        {},
        {},
        {
            **{f"server.{k}": _NET for k in _INET},
            **_keys(_NET, "host", "port"),
            **_keys(
                _SCALAR,
                "path",
                "user",
                "host-key-check.mode",
                "host-key-check.type",
                "host-key-check.hash",
                "host_key_check",
            ),
        },
    ),
    "http": _Driver("protocol", {}, {}, {"url": _NET, **_CURL, **_keys(_SCALAR, "cookie", "cookie-secret")}),
    "https": _Driver(
        "protocol", {}, {}, {"url": _NET, **_CURL, **_keys(_SCALAR, "cookie", "cookie-secret"), "sslverify": _SCALAR}
    ),
    "ftp": _Driver("protocol", {}, {}, {"url": _NET, **_CURL}),
    "ftps": _Driver("protocol", {}, {}, {"url": _NET, **_CURL, "sslverify": _SCALAR}),
    **{
        name: _Driver(
            "protocol",
            {},
            {},
            {
                **_keys(_NET, "transport", "portal"),
                **_keys(
                    _SCALAR, "target", "lun", "user", "password-secret", "initiator-name", "header-digest", "timeout"
                ),
            },
        )
        for name in ("iscsi", "iser")
    },
    "gluster": _Driver(
        "protocol",
        {},
        {},
        {
            **{f"server.N.{k}": _NET for k in _SOCKET_ADDRESS},
            "server.N.path": _SOCKET,
            "filename": _NET,
            "logfile": _FILE,
            **_keys(_SCALAR, "volume", "path", "debug"),
        },
    ),
    "rbd": _Driver(
        "protocol",
        {},
        {},
        {
            "conf": _FILE,
            **_keys(_NET, "server.N.host", "server.N.port"),
            **_keys(
                _SCALAR,
                "pool",
                "namespace",
                "image",
                "snapshot",
                "encrypt.format",
                "encrypt.key-secret",
                "user",
                "auth-client-required.N",
                "key-secret",
            ),
        },
    ),
    "vvfat": _Driver("protocol", {}, {}, {"dir": _DIR, **_keys(_SCALAR, "fat-type", "floppy", "label", "rw")}),
    "null-co": _Driver("protocol", {}, {}, _keys(_SCALAR, "size", "latency-ns", "read-zeroes")),
    "null-aio": _Driver("protocol", {}, {}, _keys(_SCALAR, "size", "latency-ns", "read-zeroes")),
    "nvme": _Driver("protocol", {}, {}, {"device": _DIR, "namespace": _SCALAR}),
    # libblkio drivers (7.2's QAPI; not in every build)
    "io_uring": _Driver("protocol", {}, {}, {"filename": _FILE}),
    "nvme-io_uring": _Driver("protocol", {}, {}, {"path": _FILE}),
    "virtio-blk-vfio-pci": _Driver("protocol", {}, {}, {"path": _DIR}),
    "virtio-blk-vhost-user": _Driver("protocol", {}, {}, {"path": _SOCKET}),
    "virtio-blk-vhost-vdpa": _Driver("protocol", {}, {}, {"path": _FILE}),
}

#: bdrv_find_protocol: each driver's protocol_name -> driver.
PROTOCOLS: Mapping[str, str] = {
    "file": "file",
    "host_device": "host_device",
    "host_cdrom": "host_cdrom",
    "nbd": "nbd",
    "nbd+tcp": "nbd",
    "nbd+unix": "nbd",
    "http": "http",
    "https": "https",
    "ftp": "ftp",
    "ftps": "ftps",
    "ssh": "ssh",
    "iscsi": "iscsi",
    "iser": "iser",
    "gluster": "gluster",
    "gluster+tcp": "gluster",
    "gluster+unix": "gluster",
    "gluster+rdma": "gluster",
    "rbd": "rbd",
    "nfs": "nfs",
    "fat": "vvfat",
    "blkdebug": "blkdebug",
    "blkverify": "blkverify",
    "null-co": "null-co",
    "null-aio": "null-aio",
    "nvme": "nvme",
}

_CHILD_WRITABLE = frozenset({"target", "log"})


# --------------------------------------------------------------------------
# Errors


_REDACTIONS = (
    (re.compile(r"//[^/?#\s]*@"), "//***@"),
    (re.compile(r"(:key=)(?:\\.|[^:\\])*"), r"\1***"),
    (
        re.compile(r'("(?:[^"\\]*\.)?(?:password|key|secret|cookie|user|username)[^"\\]*"\s*:\s*)"(?:\\.|[^"\\])*"'),
        r'\1"***"',
    ),
)


def _refused(name: str, reason: str) -> BackingNameError:
    masked = name
    for pattern, replacement in _REDACTIONS:
        masked = pattern.sub(replacement, masked)
    shown = masked if len(masked) <= 200 else masked[:200] + "..."
    return BackingNameError(masked, reason, shown=shown)


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# --------------------------------------------------------------------------
# The walk


class _Ctx(NamedTuple):
    role: str
    format: str | None
    follows_backing: bool
    writable: bool
    #: a node without "driver": "probe" (qemu probes the format; needs a
    #: file child) or "protocol" (the driver comes from "filename").
    mode: str
    depth: int


class _Out:
    def __init__(self, name: str) -> None:
        self.name = name
        self.targets: list[Target] = []
        self.network: list[str] = []

    def add(
        self, kind: str, path: str, option: str, ctx: _Ctx, role: str | None = None, writable: bool = False
    ) -> None:
        if not isinstance(path, str) or not path:
            raise _refused(self.name, f"{option!r} is not a non-empty string")
        if "\x00" in path:
            raise _refused(self.name, f"{option!r} contains a NUL character")
        self.targets.append(
            Target(
                kind,
                path,
                option,
                role if role is not None else ctx.role,
                writable or ctx.writable,
                ctx.format if role is None else None,
                "cwd",
                ctx.follows_backing if role is None else False,
            )
        )


def qemu_opens(name: str, format: str | None = None) -> QemuName:
    """Every local file, directory and socket qemu 7.2 opens for the backing
    name ``name`` recorded with the backing format ``format`` (None: none
    recorded, qemu probes).  Raises :class:`BackingNameError`, and nothing
    else, for a name that cannot be modelled completely."""
    if not isinstance(name, str):
        raise _refused(repr(name), f"backing name is a {type(name).__name__}, not a str")
    if not name:
        raise _refused(name, "empty backing name")
    if len(name) > MAX_NAME_LENGTH:
        raise _refused(name, f"backing name longer than {MAX_NAME_LENGTH} characters")
    if "\x00" in name:
        raise _refused(name, "backing name contains a NUL character")
    if format is not None and format not in DRIVERS:
        raise _refused(name, f"unknown backing format {_clip(format)!r}")
    out = _Out(name)
    fmt_driver = DRIVERS.get(format) if format is not None else None
    follows = format is None or bool(fmt_driver and fmt_driver.backing)

    if name.startswith("json:"):
        flat = _parse_json(out, name[len("json:") :])
        top = dict(flat)
        if format is not None:
            top.pop("driver", None)  # the recorded format wins (qdict_join, no overwrite)
            top["driver"] = format
        ctx = _Ctx("image", None, True, False, "probe", 0)
        _walk(out, [("opts", "", top, ctx)])
        top_driver = top.get("driver")
        return QemuName(tuple(out.targets), tuple(out.network), top_driver if isinstance(top_driver, str) else None)

    protocol = protocol_of(name)
    if protocol is None:
        out.targets.append(Target("file", name, "", "image", False, format, "overlay", follows))
        return QemuName(tuple(out.targets), (), format)

    if fmt_driver is not None and fmt_driver.kind == "protocol":
        # The recorded format is a protocol driver: it parses the name itself.
        driver = PROTOCOLS.get(protocol)
        if driver != format:
            if format in ("file", "host_device", "host_cdrom"):
                # raw_parse_filename strips only its own prefix.
                out.targets.append(Target("file", name, "", "image", False, None, "cwd", False))
                return QemuName(tuple(out.targets), (), format)
            raise _refused(name, f"driver {format!r} cannot parse a {protocol!r} name")
        ctx = _Ctx("image", None, False, False, "protocol", 0)
        _walk(out, [("name", "", name, ctx, False)])
        return QemuName(tuple(out.targets), tuple(out.network), format)

    ctx = _Ctx("image", format, follows, False, "protocol", 0)
    _walk(out, [("name", "", name, ctx, True)])
    return QemuName(tuple(out.targets), tuple(out.network), format if format is not None else PROTOCOLS.get(protocol))


def _walk(out: _Out, stack: list[tuple]) -> None:  # type: ignore[type-arg]
    while stack:
        item = stack.pop()
        if item[0] == "opts":
            _, prefix, opts, ctx = item
            stack.extend(_node(out, prefix, opts, ctx))
        else:
            _, option, text, ctx, probe_device = item
            stack.extend(_string_name(out, option, text, ctx, probe_device))


# --------------------------------------------------------------------------
# json: parsing and flattening


def _json_depth_ok(text: str) -> bool:
    """Whether brackets nest at most MAX_DEPTH deep (scanned without recursion,
    before json.loads can recurse)."""
    depth = 0
    in_string = False
    escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def _parse_json(out: _Out, text: str) -> dict[str, object]:
    """qobject_from_json, then qdict_flatten: one level of "a.b.c" keys."""
    if not _json_depth_ok(text):
        raise _refused(out.name, f"json: nested deeper than {MAX_DEPTH}")
    try:
        root = json_object(text)
    except ValueError as e:
        raise _refused(out.name, f"json: {e}") from None
    flat: dict[str, object] = {}
    work: list[tuple[str, object]] = [("", root)]
    while work:
        prefix, value = work.pop()
        items: Iterator[tuple[str, object]]
        if isinstance(value, dict):
            items = iter(value.items())
        else:
            assert isinstance(value, list)
            items = ((str(i), v) for i, v in enumerate(value))
        for key, child in items:
            full = f"{prefix}.{key}" if prefix else key
            if isinstance(child, (dict, list)) and child:
                work.append((full, child))
                continue
            if isinstance(child, (dict, list)):
                raise _refused(out.name, f"json: empty {type(child).__name__} for {_clip(full)!r}")
            if full in flat:
                raise _refused(out.name, f"json: {_clip(full)!r} given twice (nested and flattened)")
            flat[full] = child
    return flat


# --------------------------------------------------------------------------
# One node of the tree


def _is_index(text: str) -> bool:
    return text.isascii() and text.isdigit() and (text == "0" or not text.startswith("0"))


def _pattern(key: str) -> str:
    """The table's spelling of a flattened key: list indices as "N"."""
    return ".".join("N" if _is_index(part) else part for part in key.split("."))


def _node(out: _Out, prefix: str, opts: dict[str, object], ctx: _Ctx) -> list[tuple]:  # type: ignore[type-arg]
    """One node: its driver, its own options, and its children as new work."""
    name = out.name
    if ctx.depth > MAX_DEPTH:
        raise _refused(name, f"json: nodes nested deeper than {MAX_DEPTH}")
    opts = dict(opts)
    driver_value = opts.pop("driver", None)
    has_file = any(k == "file" or k.startswith("file.") for k in opts)
    if driver_value is None:
        if "filename" in opts and not has_file:
            driver_name = "file"  # bdrv_find_protocol without prefixes: a local file
        elif has_file and ctx.mode == "probe":
            driver_name = ""  # probed format
        else:
            raise _refused(name, f"json: node {_clip(prefix or '<top>')!r} has no 'driver' (nor a file to probe)")
    elif not isinstance(driver_value, str):
        raise _refused(name, f"json: {prefix + 'driver'!r} is not a string")
    else:
        driver_name = driver_value
    if driver_name == "":
        driver = _Driver("format", {"file": "", "backing": "backing"}, {}, {}, True)
    else:
        found = DRIVERS.get(driver_name)
        if found is None:
            raise _refused(name, f"json: unknown driver {_clip(driver_name)!r}")
        driver = found

    # Split the options into this node's scalars and its children's options.
    scalars: dict[str, object] = {}
    children: dict[str, dict[str, object]] = {}
    child_roles: dict[str, str] = {}
    for key, value in opts.items():
        head, dot, rest = key.partition(".")
        child: str | None = None
        if head in driver.children:
            child, role = head, driver.children[head]
        elif head in driver.arrays and dot:
            index, dot2, rest2 = rest.partition(".")
            if _is_index(index):
                child, role, dot, rest = f"{head}.{index}", driver.arrays[head], dot2, rest2
        if child is None:
            scalars[key] = value
            continue
        if not dot:
            # A child given as a string: a node-name reference ("backing": null or "" is none).
            if child == "backing" and (value is None or value == ""):
                children.setdefault(child, {})
                child_roles[child] = "none"
                continue
            raise _refused(name, f"json: {prefix + key!r} names a node by reference; not modelled")
        if child_roles.get(child) == "none":
            raise _refused(name, f"json: {prefix + child!r} is both null and an object")
        children.setdefault(child, {})[rest] = value
        child_roles[child] = role

    for string_key, child in (("x-image", "image" if driver_name == "blkdebug" else "test"), ("x-raw", "raw")):
        if string_key in scalars and child in children:
            raise _refused(name, f"json: {prefix + string_key!r} and {prefix + child!r} given together; not modelled")

    work: list[tuple] = []  # type: ignore[type-arg]
    here = ctx
    if ctx.mode == "probe" and driver.kind != "format":
        # A driver given where qemu would probe: nothing reads a header here.
        here = ctx._replace(format=None, follows_backing=False)
    _scalars(out, prefix, driver_name, driver, scalars, here, work)

    backing_kids = children.get("backing")
    overridden = child_roles.get("backing") == "none" or (
        backing_kids is not None and ("file.filename" in backing_kids or "filename" in backing_kids)
    )
    for child, child_opts in children.items():
        role = child_roles[child]
        if role == "none":
            continue
        if driver.kind == "format":
            if role == "":
                fmt = driver_name or None
                follows = (driver.backing and not overridden) if driver_name else not overridden
                sub = _Ctx(ctx.role, fmt, follows, ctx.writable, "protocol", ctx.depth + 1)
            elif role == "backing":
                sub = _Ctx("backing", None, True, False, "probe", ctx.depth + 1)
            else:
                sub = _Ctx(role, None, False, False, "protocol", ctx.depth + 1)
        elif role == "":
            sub = here._replace(mode="probe", depth=ctx.depth + 1)
        else:
            # quorum children, blkverify test (probed); cbw target, log (protocol)
            probed = role == "child"
            sub = _Ctx(role, None, probed, role in _CHILD_WRITABLE, "probe" if probed else "protocol", ctx.depth + 1)
        work.append(("opts", f"{prefix}{child}.", child_opts, sub))
    return work


def _scalars(
    out: _Out,
    prefix: str,
    driver_name: str,
    driver: _Driver,
    scalars: dict[str, object],
    ctx: _Ctx,
    work: list[tuple],  # type: ignore[type-arg]
) -> None:
    name = out.name
    kinds: dict[str, str] = {}
    for key, value in scalars.items():
        pattern = _pattern(key)
        kind = _SCALAR if pattern in _COMMON else driver.keys.get(pattern)
        if kind is None:
            shown = driver_name or "(probed format)"
            raise _refused(name, f"json: driver {shown!r} has no option {_clip(prefix + key)!r} that imgchain knows")
        if kind in (_FILE, _DIR, _SOCKET, _NAME) and not (isinstance(value, str) and value):
            raise _refused(name, f"json: {_clip(prefix + key)!r} is not a non-empty string")
        kinds[key] = kind

    if driver_name in ("nbd", "gluster"):
        _socket_addresses(out, prefix, driver_name, scalars, kinds, ctx)
    elif driver_name:
        for key, kind in kinds.items():
            if kind == _SOCKET:
                out.add("socket", str(scalars[key]), prefix + key, ctx, role="socket")
    for key, kind in kinds.items():
        value = scalars[key]
        option = prefix + key
        if kind == _FILE:
            assert isinstance(value, str)
            if key == "config" or key == "conf":
                out.add("file", value, option, ctx, role="config")
            elif key == "logfile":
                out.add("file", value, option, ctx, role="log", writable=True)
            else:
                out.add("file", value, option, ctx)
        elif kind == _DIR:
            assert isinstance(value, str)
            if driver_name == "vvfat":
                rw = scalars.get("rw", False)
                writable = rw not in (False, "off", "no", "false", "n")
                out.add("dir", value, option, ctx, role="dir", writable=writable)
            elif driver_name == "nvme":
                out.add("dir", f"/sys/bus/pci/devices/{value}", option, ctx, role="device")
            else:
                out.add("dir", value, option, ctx, role="device")
        elif kind == _NAME:
            assert isinstance(value, str)
            child = "image" if key == "x-image" and driver_name == "blkdebug" else ("raw" if key == "x-raw" else "test")
            probed = child == "test"
            sub = _Ctx(
                "child" if probed else ctx.role,
                None if probed else ctx.format,
                True if probed else ctx.follows_backing,
                ctx.writable,
                "probe" if probed else "protocol",
                ctx.depth + 1,
            )
            work.append(("name", option, value, sub, True))
        elif kind == _NET and driver_name in ("http", "https", "ftp", "ftps") and key == "url":
            out.network.append(f"{driver_name} {_mask_url(str(value))}")
        elif kind == _NET and driver_name == "gluster" and key == "filename":
            if not isinstance(value, str):
                raise _refused(name, f"json: {option!r} is not a string")
            _gluster_url(out, value, option, ctx)
    if driver_name in ("ssh", "nfs", "iscsi", "iser", "rbd"):
        hosts = [str(v) for k, v in scalars.items() if kinds[k] == _NET and k.rsplit(".", 1)[-1] in ("host", "portal")]
        out.network.append(f"{driver_name} {','.join(hosts) or '(default)'}")


def _socket_addresses(
    out: _Out, prefix: str, driver_name: str, scalars: dict[str, object], kinds: dict[str, str], ctx: _Ctx
) -> None:
    """nbd's server / gluster's server.N (SocketAddress), and nbd's legacy
    path/host/port: unix paths are local sockets (abstract ones are not files)."""
    groups: dict[str, dict[str, object]] = {}
    for key, value in scalars.items():
        if key.startswith("server."):
            head, _, field = key.rpartition(".")
            groups.setdefault(head, {})[field] = value
    for head, fields in groups.items():
        kind = fields.get("type", "inet" if driver_name == "nbd" else None)
        if kind == "unix" or "path" in fields:
            path = fields.get("path")
            if not isinstance(path, str) or not path:
                raise _refused(out.name, f"json: {prefix + head!r}: a unix socket needs a 'path'")
            abstract = fields.get("abstract", False) not in (False, "off", "no", "false", "n")
            if abstract:
                out.network.append(f"{driver_name} unix abstract {path!r}")
            else:
                out.add("socket", path, f"{prefix}{head}.path", ctx, role="socket")
        elif kind in ("inet", "tcp"):
            out.network.append(f"{driver_name} tcp {fields.get('host')}:{fields.get('port')}")
        elif kind == "vsock":
            out.network.append(f"{driver_name} vsock {fields.get('cid')}:{fields.get('port')}")
        elif kind == "fd":
            out.network.append(f"{driver_name} fd {fields.get('str')}")
        else:
            raise _refused(out.name, f"json: {prefix + head!r}: socket address type {_clip(str(kind))!r} unknown")
    if driver_name == "nbd":
        if "path" in scalars:
            out.add("socket", str(scalars["path"]), prefix + "path", ctx, role="socket")
        if "host" in scalars:
            out.network.append(f"nbd tcp {scalars.get('host')}:{scalars.get('port')}")


# --------------------------------------------------------------------------
# Names given as strings: PROTO:REST (bdrv_find_protocol, bdrv_parse_filename)


def _string_name(out: _Out, option: str, text: str, ctx: _Ctx, probe_device: bool) -> list[tuple]:  # type: ignore[type-arg]
    name = out.name
    if ctx.depth > MAX_DEPTH:
        raise _refused(name, f"names nested deeper than {MAX_DEPTH}")
    if text.startswith("json:"):
        flat = _parse_json(out, text[len("json:") :])
        return [("opts", f"{option}:" if option else "", flat, ctx._replace(depth=ctx.depth + 1))]
    protocol = protocol_of(text)
    if protocol is None:
        out.add("file", text, option, ctx)
        return []
    driver = PROTOCOLS.get(protocol)
    if driver is None:
        raise _refused(name, f"Unknown protocol {_clip(protocol)!r}")
    if probe_device:
        # find_hdev_driver: the whole name, opened O_NONBLOCK, is used if it
        # is a block device or CD-ROM.
        out.add("file", text, option, ctx, role="device-probe")
    if driver in ("file", "host_device", "host_cdrom"):
        path = text[len(protocol) + 1 :]  # only its own prefix is stripped
        out.add("file", path, option, ctx)
        return []
    if driver == "vvfat":
        _vvfat(out, text, option, ctx)
        return []
    if driver == "blkdebug":
        rest = text[len("blkdebug:") :]
        config, colon, image = rest.partition(":")
        if not colon:
            raise _refused(name, "blkdebug requires both config file and image path")
        if config:
            out.add("file", config, option, ctx, role="config")
        return [("name", f"{option}>x-image" if option else "x-image", image, ctx._replace(depth=ctx.depth + 1), True)]
    if driver == "blkverify":
        rest = text[len("blkverify:") :]
        raw, colon, test = rest.partition(":")
        if not colon:
            raise _refused(name, "blkverify requires raw copy and original image path")
        test_ctx = _Ctx("child", None, True, ctx.writable, "probe", ctx.depth + 1)
        return [
            ("name", f"{option}>x-raw" if option else "x-raw", raw, ctx._replace(depth=ctx.depth + 1), True),
            ("name", f"{option}>x-image" if option else "x-image", test, test_ctx, True),
        ]
    if driver == "nbd":
        _nbd(out, text, protocol, option, ctx)
        return []
    if driver == "gluster":
        _gluster_url(out, text, option, ctx)
        return []
    if driver == "rbd":
        _rbd(out, text, option, ctx)
        return []
    if driver in ("null-co", "null-aio"):
        if text != f"{driver}://":
            raise _refused(name, f"The only allowed filename for this driver is '{driver}://'")
        return []
    if driver == "nvme":
        device = text[len("nvme://") :].partition("/")[0] if text.startswith("nvme://") else ""
        if not device:
            raise _refused(name, "nvme: the name needs nvme://DEVICE/NAMESPACE")
        out.add("dir", f"/sys/bus/pci/devices/{device}", option, ctx, role="device")
        return []
    # http, https, ftp, ftps, ssh, iscsi, iser, nfs: network only
    out.network.append(f"{driver} {_mask_url(text)}")
    return []


def _vvfat(out: _Out, text: str, option: str, ctx: _Ctx) -> None:
    """vvfat_parse_filename: options found anywhere by strstr, the directory
    after the last ':' (or from a DOS drive letter 'X:' just before it)."""
    rw = ":rw:" in text
    i = text.rindex(":")
    if i >= 2 and text[i - 2] == ":" and text[i - 1].isascii() and text[i - 1].isalpha():
        directory = text[i - 1 :]
    else:
        directory = text[i + 1 :]
    if not directory:
        raise _refused(out.name, "fat: names no directory")
    out.add("dir", directory, option, ctx, role="dir", writable=rw)


def _split_url(text: str) -> tuple[str, str, str, str]:
    """scheme, authority, path, query of a URL (enough for qemu's uses here)."""
    scheme, _, rest = text.partition("://")
    rest, _, _fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    return scheme, authority, slash + path, query


def _query_params(out: _Out, query: str) -> list[tuple[str, str]]:
    """query_params_parse: '&' or ';' separated, each name and value unescaped."""
    params: list[tuple[str, str]] = []
    for part in re.split("[&;]", query) if query else []:
        if not part:
            continue
        key, _, value = part.partition("=")
        if "%" in value:
            # qemu's URI parser and query_params_parse may each unescape.
            raise _refused(out.name, "a '%' escape in a socket path is not modelled")
        params.append((unquote(key), value))
    return params


def _nbd(out: _Out, text: str, protocol: str, option: str, ctx: _Ctx) -> None:
    """nbd_parse_filename / nbd_parse_uri."""
    name = out.name
    if "://" in text:
        scheme, authority, _path, query = _split_url(text)
        params = _query_params(out, query)
        if scheme == "nbd+unix":
            if authority or len(params) != 1 or params[0][0] != "socket":
                raise _refused(name, "nbd+unix: needs nbd+unix:///EXPORT?socket=PATH and nothing else")
            out.add("socket", params[0][1], option, ctx, role="socket")
        elif scheme in ("nbd", "nbd+tcp"):
            if params:
                raise _refused(name, f"{scheme}: takes no query")
            out.network.append(f"nbd tcp {authority.rpartition('@')[2] or 'localhost'}")
        else:
            raise _refused(name, f"nbd: bad URL scheme {_clip(scheme)!r}")
        return
    if protocol != "nbd":
        raise _refused(name, f"File name string for NBD must start with 'nbd:' (not {protocol!r})")
    spec = text[len("nbd:") :]
    cut = spec.find(":exportname=")
    if cut >= 0:
        spec = spec[:cut]
    if not spec:
        raise _refused(name, "nbd: no host or socket")
    if spec.startswith("unix:"):
        path = spec[len("unix:") :]
        out.add("socket", path, option, ctx, role="socket")
    else:
        out.network.append(f"nbd tcp {spec}")


def _gluster_url(out: _Out, text: str, option: str, ctx: _Ctx) -> None:
    """qemu_gluster_parse_uri: gluster[+tcp|+unix|+rdma]://[host[:port]]/VOLUME/PATH[?socket=...]."""
    name = out.name
    if "://" not in text:
        raise _refused(name, "gluster: the name must be a URL")
    scheme, authority, _path, query = _split_url(text)
    params = _query_params(out, query)
    if scheme == "gluster+unix":
        if authority or len(params) != 1 or params[0][0] != "socket":
            raise _refused(name, "gluster+unix: needs gluster+unix:///VOLUME/PATH?socket=PATH")
        out.add("socket", params[0][1], option, ctx, role="socket")
    elif scheme in ("gluster", "gluster+tcp", "gluster+rdma"):
        if params:
            raise _refused(name, f"{scheme}: takes no query")
        out.network.append(f"gluster tcp {authority.rpartition('@')[2]}")
    else:
        raise _refused(name, f"gluster: bad URL scheme {_clip(scheme)!r}")


def _rbd_tokens(text: str, delim: str) -> tuple[str, str | None]:
    """qemu_rbd_next_tok: up to ``delim`` not escaped by a backslash."""
    i = 0
    n = len(text)
    while i < n:
        if text[i] == delim:
            return text[:i], text[i + 1 :]
        if text[i] == "\\" and i + 1 < n:
            i += 1
        i += 1
    return text, None


def _rbd_unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text, flags=re.DOTALL)


#: rbd key=value options that name no local file (everything else goes to
#: rados_conf_set, where keyring=, log_file=, admin_socket= ... are files).
_RBD_SAFE_KEYS = frozenset({"id", "mon_host", "key", "auth_supported", "auth_client_required", "client_mount_timeout"})


def _rbd(out: _Out, text: str, option: str, ctx: _Ctx) -> None:
    """qemu_rbd_parse_filename: rbd:POOL/IMAGE[@SNAP][:KEY=VALUE]..."""
    name = out.name
    rest: str | None = text[len("rbd:") :]
    assert rest is not None
    _pool, rest = _rbd_tokens(rest, "/")
    if rest is None:
        raise _refused(name, "rbd: Pool name is required")
    _image, rest = _rbd_tokens(rest, ":")
    hosts = ""
    while rest is not None:
        key, rest = _rbd_tokens(rest, "=")
        if rest is None:
            raise _refused(name, f"rbd: conf option {_clip(_rbd_unescape(key))!r} has no value")
        value, rest = _rbd_tokens(rest, ":")
        key, value = _rbd_unescape(key), _rbd_unescape(value)
        if key == "conf":
            out.add("file", value, option, ctx, role="config")
        elif key == "mon_host":
            hosts = value
        elif key not in _RBD_SAFE_KEYS:
            raise _refused(name, f"rbd: option {_clip(key)!r} goes to librados, which may open files with it")
    out.network.append(f"rbd {hosts or '(monitors from ceph.conf)'}")


def _mask_url(url: str) -> str:
    return re.sub(r"//[^/?#]*@", "//***@", url)
