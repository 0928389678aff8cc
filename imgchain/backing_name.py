"""Backing file names that are not plain paths, read as libvirt reads them.

The spec is libvirt's own parser (libvirt 9.x,
``src/storage_file/storage_source_backingstore.c`` and the dispatcher
``virStorageSourceNewFromBackingAbsolute`` in ``storage_source.c``); each
function below names the libvirt function it follows, so the two can be held
side by side.  No I/O, no network: a name goes in, a frozen value comes out.

How a name is dispatched (``virStorageSourceNewFromBackingAbsolute``)::

    no colon before the first slash   LocalPath(name)            (a plain path)
    file:REST                         LocalPath(REST)            (qemu's rule; libvirt refuses it)
    fat:DIR                           DirSource(DIR)             (the rest, options and all)
    json:{...}                        _parse_json                (virStorageSourceParseBackingJSON)
    anything containing "://"         _parse_uri_source          (virStorageSourceParseBackingURI)
    nbd:... / rbd:...                 _parse_nbd_colon / _parse_rbd_colon

Errors: :class:`imgchain.errors.BackingNameError` (the name is malformed,
or libvirt would refuse it).  ``str(error)`` is one line, the reason followed by the name through ``!r``
with credentials masked (URL user info, rbd ``key=``, json passwords).

Credentials are never kept: a URL's user info, rbd ``id=``/``key=``, json
``user``/``password``/``password-secret``/``key-secret``/``cookie`` only set
``has_credentials``.  libvirt drops them the same way (its parsers return 1,
"valid but holds inline authentication").
"""

from __future__ import annotations

import dataclasses
import re
import string
from dataclasses import dataclass, field
from typing import TypeAlias
from urllib.parse import unquote

from imgchain.errors import BackingNameError
from imgchain.names import json_object, protocol_of, strip_file_protocol

__all__ = [
    "PROTOCOLS",
    "TRANSPORTS",
    "BackingName",
    "DirSource",
    "Host",
    "LocalPath",
    "NetworkSource",
    "Parsed",
    "default_port",
    "parse_backing_name",
]


# --------------------------------------------------------------------------
# The result


@dataclass(frozen=True, slots=True)
class Host:
    """One ``<host>`` of a network source."""

    name: str | None = None  # host name or address; None for a unix socket
    port: int | None = None  # None where libvirt leaves it unset
    transport: str = "tcp"  # "tcp" (libvirt's default), "unix" or "rdma"
    socket: str | None = None  # the unix socket path (libvirt keeps a ?socket= on any transport)


@dataclass(frozen=True, slots=True)
class NetworkSource:
    """libvirt's ``<source protocol=... name=...>`` with its hosts."""

    protocol: str
    name: str | None
    hosts: tuple[Host, ...] = ()
    snapshot: str | None = None
    config: str | None = None
    query: str | None = None
    #: Options libvirt keeps from a json: name: https/ftps ``sslverify``
    #: (``<ssl verify=>``), ``readahead`` and ``timeout`` (http, https, ftp,
    #: ftps, tftp), nfs ``user``/``group`` (``<identity>``, as libvirt
    #: writes them: ``+UID``).
    ssl_verify: bool | None = None
    readahead: int | None = None
    timeout: int | None = None
    nfs_user: str | None = None
    nfs_group: str | None = None
    #: Whether the name held credentials (never kept).  Not compared: the
    #: same source read back from XML, where none are written, is equal.
    has_credentials: bool = dataclasses.field(default=False, compare=False)
    #: Whether libvirt's parser returns 1 for it ("inline authentication":
    #: a URL with user info, a json: iscsi with user or password): libvirt
    #: then adds no backing layer for it at all.  Not compared, as above.
    inline_auth: bool = dataclasses.field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class LocalPath:
    """A local file (``driver='file'``) or device (``host_device``, ``host_cdrom``)."""

    path: str
    driver: str = "file"


@dataclass(frozen=True, slots=True)
class DirSource:
    """A directory shown to the guest as a FAT disk (``fat:DIR``, json ``vvfat``)."""

    path: str


BackingName: TypeAlias = LocalPath | NetworkSource | DirSource


@dataclass(frozen=True, slots=True)
class Parsed:
    """A backing name as libvirt reads it: the source, and what a json: name wraps it in."""

    source: BackingName
    format: str | None = None  # the format driver a json: name wraps its file in, else None
    #: A json: raw driver's ``offset`` and ``size`` (libvirt's storage slice), else None.
    slice: tuple[int | None, int | None] | None = None


def _refused(name: str, reason: str) -> BackingNameError:
    """The error for a refused name: credentials masked, the name clipped."""
    masked = _redact(name)
    return BackingNameError(masked, reason, shown=_clip(masked))


# --------------------------------------------------------------------------
# Tables

#: libvirt's virStorageNetProtocol names (storage_source_conf.c; its "none" is
#: left out) with virStorageSourceNetworkDefaultPort's ports.  None: libvirt
#: has no default (rbd: "we don't provide a default", nfs: no port at all).
_DEFAULT_PORTS: dict[str, int | None] = {
    "nbd": 10809,
    "rbd": None,
    "sheepdog": 7000,
    "gluster": 24007,
    "iscsi": 3260,
    "http": 80,
    "https": 443,
    "ftp": 21,
    "ftps": 990,
    "tftp": 69,
    "ssh": 22,
    "vxhs": 9999,
    "nfs": None,
}
PROTOCOLS: tuple[str, ...] = tuple(_DEFAULT_PORTS)

#: virStorageNetHostTransport; "tcp" is libvirt's value 0, the default.
TRANSPORTS: tuple[str, ...] = ("tcp", "unix", "rdma")

#: json drivers naming a local file or device (virStorageSourceParseBackingJSONPath).
_PATH_DRIVERS = frozenset({"file", "host_device", "host_cdrom"})

#: Format drivers that may wrap the protocol driver in a "file" child.  libvirt
#: knows only "raw"; the others are qemu's image formats, accepted here so that
#: Parsed.format can name them.
_FORMAT_DRIVERS = frozenset(
    {"raw", "qcow2", "qcow", "qed", "vmdk", "vdi", "vhdx", "vpc", "parallels", "bochs", "cloop", "dmg", "luks"}
)

#: json keys whose presence means inline authentication (never stored).
_CREDENTIAL_KEYS = frozenset(
    {
        "user",
        "username",
        "password",
        "password-secret",
        "key-secret",
        "proxy-username",
        "proxy-password-secret",
        "cookie",
        "cookie-secret",
    }
)

#: Nesting deeper than this is refused before any recursive walk.
_MAX_JSON_DEPTH = 64


def default_port(protocol: str) -> int | None:
    """libvirt's default port for ``protocol`` (virStorageSourceNetworkDefaultPort),
    or None where it has none (rbd, nfs, unknown protocols)."""
    return _DEFAULT_PORTS.get(protocol)


# --------------------------------------------------------------------------
# Entry point


def parse_backing_name(name: str) -> Parsed:
    """Parse a backing file name as libvirt does (virStorageSourceNewFromBackingAbsolute).

    Plain paths (no protocol prefix per :func:`imgchain.names.protocol_of`)
    and ``file:`` names become :class:`LocalPath`; ``fat:`` a
    :class:`DirSource`; network names a :class:`NetworkSource`.  Raises
    :class:`BackingNameError`, and nothing else, for anything malformed.
    """
    if not isinstance(name, str):
        raise _refused(repr(name), f"backing name is a {type(name).__name__}, not a str")
    if not name:
        raise _refused(name, "empty backing name")
    if "\x00" in name:
        # libvirt and qemu hold names as C strings: a NUL would cut the name short.
        raise _refused(name, "backing name contains a NUL character")

    protocol = protocol_of(name)
    if protocol is None:
        return Parsed(LocalPath(name))
    if protocol == "file":
        path = strip_file_protocol(name)
        if not path:
            raise _refused(name, "'file:' names no file")
        return Parsed(LocalPath(path))
    if protocol == "fat":
        # libvirt takes everything after "fat:" as the directory; qemu's
        # vvfat options (floppy:, rw:, 12:/16:/32:) stay part of it.
        if name == "fat:":
            raise _refused(name, "'fat:' names no directory")
        return Parsed(DirSource(name[4:]))
    if protocol == "json":
        return _parse_json(name)
    if "://" in name:
        return Parsed(_finish(name, _parse_uri_source(name, name)))
    return Parsed(_finish(name, _parse_colon(name)))


# --------------------------------------------------------------------------
# The draft: libvirt's virStorageSource, filled in by the parsers, checked
# and frozen by _finish.


@dataclass
class _HostDraft:
    """One host of a network source, while its name is being read."""

    name: str | None = None
    port: int = 0  # 0 is libvirt's "unset"
    transport: str = "tcp"
    socket: str | None = None


@dataclass
class _Draft:
    """A network source while its name is being read."""

    protocol: str
    path: str | None = None
    volume: str | None = None  # rbd pool, gluster volume: name is "volume/path"
    hosts: list[_HostDraft] = field(default_factory=list)
    snapshot: str | None = None
    config: str | None = None
    query: str | None = None
    credentials: bool = False
    inline_auth: bool = False
    ssl_verify: bool | None = None
    readahead: int | None = None
    timeout: int | None = None
    nfs_user: str | None = None
    nfs_group: str | None = None


def _finish(name: str, draft: _Draft) -> NetworkSource:
    """Check the hosts and assign default ports
    (virStorageSourceNetworkAssignDefaultPorts: TCP hosts with port 0 only)."""
    hosts: list[Host] = []
    for h in draft.hosts:
        if h.transport in ("tcp", "rdma") and not h.name:
            # libvirt would keep a host without a name; it cannot be reached.
            raise _refused(name, f"{draft.protocol}: no host name")
        if h.transport == "unix" and not h.socket:
            raise _refused(name, f"{draft.protocol}: unix transport without a socket path")
        port: int | None = h.port or None
        if port is None and h.transport == "tcp":
            port = default_port(draft.protocol)
        hosts.append(Host(name=h.name, port=port, transport=h.transport, socket=h.socket))
    source_name = draft.path
    if draft.volume is not None:
        source_name = f"{draft.volume}/{draft.path or ''}"
    return NetworkSource(
        protocol=draft.protocol,
        name=source_name,
        hosts=tuple(hosts),
        snapshot=draft.snapshot,
        config=draft.config,
        query=draft.query,
        ssl_verify=draft.ssl_verify,
        readahead=draft.readahead,
        timeout=draft.timeout,
        nfs_user=draft.nfs_user,
        nfs_group=draft.nfs_group,
        has_credentials=draft.credentials or draft.inline_auth,
        inline_auth=draft.inline_auth,
    )


def _parse_port(name: str, text: str) -> int:
    """virStringParsePort, stricter: ASCII digits only, 0..65535."""
    if not (text.isascii() and text.isdigit()):
        raise _refused(name, f"port {_clip(text)!r} is not an integer 0..65535")
    significant = text.lstrip("0") or "0"
    if len(significant) > 5 or int(significant) > 65535:
        raise _refused(name, f"port {_clip(text)!r} is outside 0..65535")
    return int(significant)


# --------------------------------------------------------------------------
# URIs: virURIParse (a wrapper of libxml2's RFC 3986 xmlParseURI) and
# virStorageSourceParseBackingURI.

_ALPHA = frozenset(string.ascii_letters)
_SCHEME = frozenset(string.ascii_letters + string.digits + "+-.")
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_SUB_DELIMS = frozenset("!$&'()*+,;=")
_HEX = frozenset(string.hexdigits)
_USERINFO = _UNRESERVED | _SUB_DELIMS | {":"}
_REG_NAME = _UNRESERVED | _SUB_DELIMS
_PCHAR = _UNRESERVED | _SUB_DELIMS | {":", "@"}
_PATH = _PCHAR | {"/"}
_QUERY = _PCHAR | {"/", "?"}
_FRAGMENT = _PCHAR | {"/", "?", "[", "]"}  # libxml2 also lets brackets into fragments
_IP_LITERAL = _UNRESERVED | {":", "%"}


@dataclass
class _Uri:
    """A URI split as libxml2's xmlParseURI splits it."""

    scheme: str
    user: str | None = None  # present (even empty) when "@" ended a user info part
    server: str | None = None
    port: int = 0
    path: str | None = None
    query: str | None = None  # raw, as libxml2's query_raw


def _scan(s: str, i: int, allowed: frozenset[str]) -> int:
    """The index after the run of ``allowed`` characters and %XX escapes from ``i``."""
    n = len(s)
    while i < n:
        if s[i] in allowed:
            i += 1
        elif s[i] == "%" and i + 2 < n and s[i + 1] in _HEX and s[i + 2] in _HEX:
            i += 3
        else:
            break
    return i


def _unescape(name: str, text: str) -> str:
    """xmlURIUnescapeString: %XX to bytes; bytes that are not UTF-8 kept as surrogates."""
    out = unquote(text, errors="surrogateescape")
    if "\x00" in out:
        raise _refused(name, "URL escapes a NUL character (%00)")
    return out


def _parse_uri(name: str, s: str) -> _Uri:
    """RFC 3986 as libxml2's xmlParseURI reads an absolute URI, plus virURIParse's
    fix-ups (server port only with a server; brackets stripped from IPv6)."""

    def bad(what: str) -> BackingNameError:
        return _refused(name, f"not a valid URL: {what}")

    n = len(s)
    if not s or s[0] not in _ALPHA:
        raise bad("the scheme must start with a letter")
    i = 1
    while i < n and s[i] in _SCHEME:
        i += 1
    if i >= n or s[i] != ":":
        raise bad("no scheme")
    uri = _Uri(scheme=s[:i])
    i += 1

    if s.startswith("//", i):
        i += 2
        j = _scan(s, i, _USERINFO)
        if j < n and s[j] == "@":
            uri.user = _unescape(name, s[i:j])
            i = j + 1
        if i < n and s[i] == "[":
            close = s.find("]", i)
            if close < 0:
                raise bad("'[' without ']' in the host")
            literal = s[i + 1 : close]
            if not literal or _scan(literal, 0, _IP_LITERAL) != len(literal):
                raise bad(f"bad IP literal {_clip(s[i : close + 1])!r}")
            host = s[i : close + 1]
            i = close + 1
        else:
            j = _scan(s, i, _REG_NAME)
            host = s[i:j]
            i = j
        if host:
            server = _unescape(name, host)
            # virStringStripIPv6Brackets
            if server.startswith("[") and server.endswith("]") and ":" in server:
                server = server[1:-1]
            uri.server = server
        if i < n and s[i] == ":":
            j = i + 1
            while j < n and s[j] in string.digits:
                j += 1
            if j == i + 1:
                raise bad("':' with no port number after the host")
            port = _parse_port(name, s[i + 1 : j])
            if uri.server:
                uri.port = port
            i = j
        if i < n and s[i] not in "/?#":
            raise bad(f"unexpected {s[i]!r} at offset {i}")
    j = _scan(s, i, _PATH)
    if j > i:
        uri.path = _unescape(name, s[i:j])
    i = j
    if i < n and s[i] == "?":
        j = _scan(s, i + 1, _QUERY)
        uri.query = s[i + 1 : j]
        i = j
    if i < n and s[i] == "#":
        i = _scan(s, i + 1, _FRAGMENT)  # libvirt ignores the fragment
    if i != n:
        raise bad(f"unexpected {s[i]!r} at offset {i}")
    return uri


def _parse_uri_source(name: str, text: str) -> _Draft:
    """virStorageSourceParseBackingURI: ``proto[+transport]://[user@]host[:port]/path[?query]``."""
    uri = _parse_uri(name, text)
    protocol, plus, transport = uri.scheme.partition("+")
    if protocol not in _DEFAULT_PORTS:
        raise _refused(name, f"unknown protocol {_clip(protocol)!r}")
    draft = _Draft(protocol=protocol)
    host = _HostDraft()
    draft.hosts.append(host)
    if plus:
        if transport not in TRANSPORTS:
            raise _refused(name, f"unknown transport {_clip(transport)!r} (tcp, unix, rdma)")
        host.transport = transport

    if uri.query is not None:
        if protocol in ("http", "https"):
            draft.query = uri.query
        elif uri.query.startswith("socket="):
            host.socket = uri.query[len("socket=") :]  # raw, everything after "socket="

    path = uri.path or ""
    if path.startswith("/"):
        path = path[1:]  # possibly skip the leading slash
    draft.path = path
    if protocol == "nbd" and not path:
        draft.path = None  # NBD allows an empty export name

    if protocol == "gluster":
        volume, slash, file = path.partition("/")
        if not path:
            raise _refused(name, "gluster: no volume name and path")
        if not slash or not volume:
            raise _refused(name, "gluster: the path needs a volume name and a file name (/VOLUME/FILE)")
        draft.volume, draft.path = volume, file

    host.port = uri.port
    host.name = uri.server
    draft.credentials = uri.user is not None  # libvirt refuses to model inline authentication
    draft.inline_auth = uri.user is not None  # (and its parser returns 1: no backing layer)
    return draft


# --------------------------------------------------------------------------
# Colon syntaxes: virStorageSourceParseBackingColon


def _parse_colon(name: str) -> _Draft:
    protocol = name[: name.index(":")]
    if protocol == "nbd":
        return _parse_nbd_colon(name)
    if protocol == "rbd":
        return _parse_rbd_colon(name, name)
    if protocol == "sheepdog":
        raise _refused(name, "libvirt has no parser for the 'sheepdog:' syntax (use sheepdog://HOST/VDI)")
    if protocol in _DEFAULT_PORTS:
        raise _refused(name, f"protocol {protocol!r} needs a URL ({protocol}://...)")
    raise _refused(name, f"unknown protocol {_clip(protocol)!r}")


def _parse_nbd_colon(name: str) -> _Draft:
    """virStorageSourceParseNBDColonString:
    ``nbd:unix:/SOCKET[:exportname=EXPORT]`` or ``nbd:HOST:PORT[:exportname=EXPORT]``."""

    def malformed(why: str) -> BackingNameError:
        return _refused(name, f"malformed nbd name: {why}")

    draft = _Draft(protocol="nbd")
    host = _HostDraft()
    draft.hosts.append(host)
    text = name
    # The first ":exportname=" ends the host part; the export is all the rest.
    cut = text.find(":exportname=")
    if cut >= 0:
        draft.path = text[cut + len(":exportname=") :]
        text = text[:cut]
    if not text.startswith("nbd:") or text == "nbd:":
        raise malformed("no host or socket")
    spec = text[len("nbd:") :]
    if spec.startswith("unix:"):
        host.transport = "unix"
        host.socket = spec[len("unix:") :]
        if not host.socket:
            raise malformed("no socket path after 'unix:'")
        return draft
    if spec.startswith(":"):
        raise malformed("no host")
    if spec.startswith("["):
        close = spec.find("]:")
        if close < 0:
            raise malformed("an IPv6 address needs ']:PORT'")
        hostname, port = spec[1:close], spec[close + 2 :]
        if not hostname:
            raise malformed("empty IPv6 address")
    else:
        hostname, colon, port = spec.partition(":")
        if not colon:
            raise malformed("no ':PORT' after the host")
    host.port = _parse_port(name, port)
    host.name = hostname
    return draft


def _parse_rbd_colon(name: str, text: str) -> _Draft:
    """virStorageSourceParseRBDColonString:
    ``[rbd:]POOL/IMAGE[@SNAP][:OPTION=VALUE]...``.

    The first ':' ends the image part whether escaped or not (libvirt's
    rule); options are split at ':' not escaped by a backslash and kept
    escaped.  Only id= (a user: flagged, not kept), mon_host= and conf= are
    read; key=, keyfile= and auth_supported= only flag credentials.
    """
    if text.startswith("rbd:"):
        text = text[len("rbd:") :]
    draft = _Draft(protocol="rbd")
    image, has_options, options = text.partition(":")
    image, at, snapshot = image.partition("@")
    if at:
        draft.snapshot = snapshot
    pool, slash, rest = image.partition("/")
    if slash:
        draft.volume, draft.path = pool, rest
        if not pool:
            raise _refused(name, "rbd: empty pool name")
    else:
        draft.path = image
    if not draft.path:
        raise _refused(name, "rbd: no image name")
    if not has_options:
        return draft

    seen_id = False
    for option in _rbd_options(options):
        key, _, value = option.partition("=")
        if key == "id":
            if seen_id:
                raise _refused(name, "rbd: duplicate 'id'")
            seen_id = True
            draft.credentials = True
        elif key == "mon_host":
            draft.hosts.extend(_rbd_host(name, h) for h in _rbd_mon_hosts(value))
        elif key == "conf":
            draft.config = value
        elif key in ("key", "keyfile") or (key == "auth_supported" and value != "none"):
            draft.credentials = True
    return draft


def _rbd_options(options: str) -> list[str]:
    """Split at ':' unless a backslash escapes it (the escape stays in)."""
    out: list[str] = []
    n = len(options)
    start = 0
    while start < n:
        end = start
        while end < n and options[end] != ":":
            if options[end] == "\\":
                end += 1
                if end >= n:
                    break
            end += 1
        out.append(options[start:end])
        start = end + 1
    return out


def _rbd_mon_hosts(value: str) -> list[str]:
    """mon_host= holds hosts separated by a backslash and ',', ';' or ' '."""
    out: list[str] = []
    n = len(value)
    h = 0
    while h < n:
        end = nxt = n
        for sep in range(h, n - 1):
            if value[sep] == "\\" and value[sep + 1] in ",; ":
                end, nxt = sep, sep + 2
                break
        out.append(value[h:end])
        h = nxt
    return out


def _rbd_host(name: str, hostport: str) -> _HostDraft:
    """virStorageSourceRBDAddHost: ``HOST[\\:PORT]`` or ``[IPV6]\\:PORT``, '\\:' inside for ':'."""
    port: int = 0
    if "]" in hostport:
        close = hostport.index("]")
        if not hostport.startswith("["):
            raise _refused(name, f"rbd: bad monitor host {_clip(hostport)!r}")
        host, tail = hostport[1:close], hostport[close + 1 :]
        if tail.startswith("\\:"):
            port = _parse_port(name, tail[2:])
        elif tail:
            raise _refused(name, f"rbd: bad monitor host {_clip(hostport)!r}")
    else:
        host, escaped_colon, tail = hostport.partition("\\:")
        if escaped_colon:
            port = _parse_port(name, tail)
    host = host.replace("\\:", ":")
    if not host or "[" in host:
        raise _refused(name, f"rbd: bad monitor host {_clip(hostport)!r}")
    return _HostDraft(name=host, port=port, transport="tcp")


# --------------------------------------------------------------------------
# json: virStorageSourceParseBackingJSON


class _JsonFloat:
    """A JSON number with a fraction or exponent, kept as its text (libvirt keeps
    every number as text; only integers are read as numbers anywhere)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _too_deep(value: object) -> bool:
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > _MAX_JSON_DEPTH:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False


def _parse_json(name: str) -> Parsed:
    text = name[len("json:") :]
    try:
        root = json_object(text, parse_float=_JsonFloat)
    except ValueError as e:
        raise _refused(name, f"json: {e}") from None
    if _too_deep(root):
        raise _refused(name, f"json: nested deeper than {_MAX_JSON_DEPTH}")
    keyed = _deflatten_keys(name, root)
    if _too_deep(keyed):  # dotted keys nest too: "a.b.c" is three levels
        raise _refused(name, f"json: nested deeper than {_MAX_JSON_DEPTH} (counting dotted keys)")
    tree = _deflatten_arrays(keyed)
    # Two syntaxes: json:{"file":{"driver":...}} and json:{"driver":...}.
    top = tree
    if isinstance(tree, dict) and "driver" not in tree and isinstance(tree.get("file"), dict):
        top = tree["file"]
    return _json_driver(name, top, allow_format=True)


def _deflatten_keys(name: str, obj: dict[str, object]) -> dict[str, object]:
    """virJSONValueObjectDeflattenKeys: "a.b": v becomes "a": {"b": v}, in key order."""
    out: dict[str, object] = {}
    for key, value in obj.items():
        target, rest = out, key
        while "." in rest:
            head, rest = rest.split(".", 1)
            if head not in target:
                target[head] = {}
            nested = target[head]
            if not isinstance(nested, dict):
                raise _refused(name, "json: mixing nested objects and values is forbidden")
            target = nested
        if rest in target:
            raise _refused(name, f"json: can't deflatten colliding key {_clip(key)!r}")
        target[rest] = _deflatten_keys(name, value) if isinstance(value, dict) else value
    return out


_UINT_KEY = re.compile(r"[ \t\n\v\f\r]*\+?[0-9]+")


def _deflatten_arrays(value: object) -> object:
    """virJSONValueObjectDeflattenArrays: an object whose keys are exactly
    0..n-1 (as strtoul reads them) becomes an array; {} becomes []."""
    if not isinstance(value, dict):
        return value
    obj = {k: _deflatten_arrays(v) for k, v in value.items()}
    members: dict[int, object] = {}
    for key, item in obj.items():
        if not _UINT_KEY.fullmatch(key):
            return obj
        digits = key.lstrip(" \t\n\v\f\r+").lstrip("0") or "0"
        if len(digits) > len(str(len(obj))):
            return obj
        index = int(digits)
        if index >= len(obj) or index in members:
            return obj
        members[index] = item
    return [members[i] for i in range(len(obj))]


def _get_str(name: str, obj: object, key: str) -> str | None:
    """virJSONValueObjectGetString: the value if it is a string, else None."""
    if not isinstance(obj, dict):
        return None
    value = obj.get(key)
    if not isinstance(value, str):
        return None
    if "\x00" in value:
        raise _refused(name, f"json: {key!r} contains a NUL character")
    return value


def _get_uint(name: str, obj: dict[str, object], key: str, limit: int) -> int:
    """virJSONValueObjectGetNumberUlong/Int where libvirt requires one: an
    integer (not a bool, not a fraction) within ``limit``."""
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise _refused(name, f"json: malformed {key!r}")
    return value


def _has_credentials(obj: dict[str, object], driver: str) -> bool:
    keys = _CREDENTIAL_KEYS - {"user"} if driver == "nfs" else _CREDENTIAL_KEYS  # nfs user is a uid
    return any(k in obj for k in keys)


def _json_driver(name: str, obj: object, allow_format: bool) -> Parsed:
    """virStorageSourceParseBackingJSONInternal and its table of drivers."""
    driver = _get_str(name, obj, "driver")
    if driver is None or not isinstance(obj, dict):
        raise _refused(name, "json: no 'driver' name")

    if driver in _PATH_DRIVERS:
        path = _get_str(name, obj, "filename")
        if not path:
            raise _refused(name, f"json: driver {driver!r} needs a 'filename'")
        return Parsed(LocalPath(path, driver))

    if driver in _FORMAT_DRIVERS:
        if not allow_format:
            raise _refused(name, "json: must not have nested format drivers")
        piece: tuple[int | None, int | None] | None = None
        if driver == "raw" and ("offset" in obj or "size" in obj):
            # offset/size select a slice of the file (libvirt's <slice type='storage'>).
            offset, size = (_get_uint(name, obj, k, 2**64 - 1) if k in obj else None for k in ("offset", "size"))
            piece = (offset, size)
        child = obj.get("file")
        if not isinstance(child, dict):
            raise _refused(name, f"json: format driver {driver!r} lacks a 'file' object")
        inner = _json_driver(name, child, allow_format=False)
        source = inner.source
        if isinstance(source, NetworkSource) and _has_credentials(obj, driver):
            source = dataclasses.replace(source, has_credentials=True)
        return Parsed(source, format=driver, slice=piece)

    if driver == "vvfat":
        directory = _get_str(name, obj, "dir")
        if not directory:
            raise _refused(name, "json: driver 'vvfat' needs a 'dir'")
        return Parsed(DirSource(directory))

    parser = _NETWORK_DRIVERS.get(driver)
    if parser is None:
        if driver == "nvme":
            raise _refused(name, "json: driver 'nvme' (a PCI NVMe namespace) is not modelled")
        raise _refused(name, f"json: no parser for driver {_clip(driver)!r}")
    draft = parser(name, obj, driver)
    draft.credentials = draft.credentials or _has_credentials(obj, driver)
    return Parsed(_finish(name, draft))


def _json_url(name: str, obj: dict[str, object], driver: str) -> _Draft:
    """virStorageSourceParseBackingJSONUri (http, https, ftp, ftps, tftp)."""
    url = _get_str(name, obj, "url")
    if url is None:
        raise _refused(name, f"json: driver {driver!r} needs a 'url'")
    if driver in ("https", "ftps") and "sslverify" in obj:
        verify = obj["sslverify"]
        if not isinstance(verify, bool) and verify != "off":  # "off": libguestfs's legacy spelling
            raise _refused(name, "json: malformed 'sslverify'")
    cookies = False
    if driver in ("http", "https") and "cookie" in obj:
        cookie = _get_str(name, obj, "cookie")
        if cookie is None:
            raise _refused(name, "json: malformed 'cookie'")
        for part in cookie.split(";") if cookie else []:
            if "=" not in part:
                raise _refused(name, "json: malformed http cookie (no '=')")
            cookies = True
    options = {key: _get_uint(name, obj, key, 2**64 - 1) for key in ("readahead", "timeout") if key in obj}
    draft = _json_uri_str(name, url, driver)
    draft.credentials = draft.credentials or cookies
    if driver in ("https", "ftps") and "sslverify" in obj:
        draft.ssl_verify = obj["sslverify"] is True
    draft.readahead, draft.timeout = options.get("readahead"), options.get("timeout")
    return draft


def _json_uri_str(name: str, url: str, protocol: str) -> _Draft:
    """virStorageSourceParseBackingJSONUriStr: a URL that must be of ``protocol``."""
    draft = _parse_uri_source(name, url)
    if draft.protocol != protocol:
        raise _refused(name, f"json: expected protocol {protocol!r} but got {draft.protocol!r} in the URL")
    return draft


def _inet_address(name: str, obj: object) -> _HostDraft:
    """virStorageSourceParseBackingJSONInetSocketAddress: {"host": ..., "port": ...}."""
    if obj is None:
        raise _refused(name, "json: missing remote server specification")
    host = _get_str(name, obj, "host")
    if host is None:
        raise _refused(name, "json: missing 'host' of a tcp server")
    return _HostDraft(name=host, port=_json_port(name, obj), transport="tcp")


def _json_port(name: str, obj: object) -> int:
    """A "port" as qemu writes it (a string); an integer is taken too (qemu
    accepts it; libvirt would quietly use the default port instead)."""
    if not isinstance(obj, dict) or obj.get("port") is None:
        return 0
    port = obj["port"]
    if isinstance(port, str):
        return _parse_port(name, port)
    if isinstance(port, int) and not isinstance(port, bool):
        return _parse_port(name, str(port))
    raise _refused(name, "json: 'port' is neither a string nor an integer")


def _socket_address(name: str, obj: object) -> _HostDraft:
    """virStorageSourceParseBackingJSONSocketAddress: {"type": "inet"|"tcp"|"unix", ...}."""
    if obj is None:
        raise _refused(name, "json: missing remote server specification")
    kind = _get_str(name, obj, "type")
    if kind is None:
        raise _refused(name, "json: missing socket address 'type'")
    if kind in ("tcp", "inet"):
        return _inet_address(name, obj)
    if kind == "unix":
        # "socket" is the old gluster spelling of "path".
        socket = _get_str(name, obj, "path") or _get_str(name, obj, "socket")
        if socket is None:
            raise _refused(name, "json: missing 'path' of a unix socket server")
        return _HostDraft(transport="unix", socket=socket)
    raise _refused(name, f"json: socket address type {_clip(kind)!r} is not supported")


def _json_gluster(name: str, obj: dict[str, object], driver: str) -> _Draft:
    """virStorageSourceParseBackingJSONGluster."""
    url = _get_str(name, obj, "filename")
    if url is not None:  # legacy URI syntax passed via 'filename'
        return _json_uri_str(name, url, "gluster")
    volume = _get_str(name, obj, "volume")
    path = _get_str(name, obj, "path")
    servers = obj.get("server")
    if volume is None or path is None or not isinstance(servers, list):
        raise _refused(name, "json: gluster needs 'volume', 'path' and a 'server' array")
    if not servers:
        raise _refused(name, "json: gluster needs at least one server")
    return _Draft(protocol="gluster", volume=volume, path=path, hosts=[_socket_address(name, s) for s in servers])


def _json_iscsi(name: str, obj: dict[str, object], driver: str) -> _Draft:
    """virStorageSourceParseBackingJSONiSCSI: portal HOST[:PORT], name TARGET/LUN."""
    url = _get_str(name, obj, "filename")
    if url is not None:  # legacy URI syntax passed via 'filename'
        return _json_uri_str(name, url, "iscsi")
    lun_value = obj.get("lun")
    lun = "0"
    if isinstance(lun_value, str):
        lun = lun_value
    elif isinstance(lun_value, int) and not isinstance(lun_value, bool):
        lun = str(lun_value)
    elif isinstance(lun_value, _JsonFloat):
        lun = lun_value.text
    if _get_str(name, obj, "transport") != "tcp":
        raise _refused(name, "json: only the 'tcp' transport is supported for iSCSI")
    portal = _get_str(name, obj, "portal")
    if portal is None:
        raise _refused(name, "json: iSCSI needs a 'portal'")
    target = _get_str(name, obj, "target")
    if target is None:
        raise _refused(name, "json: iSCSI needs a 'target'")
    host = _HostDraft(name=portal, transport="tcp")
    colon = portal.rfind(":")
    if colon >= 0 and "]" not in portal[colon:]:
        host.port = _parse_port(name, portal[colon + 1 :])
        host.name = portal[:colon]
    draft = _Draft(protocol="iscsi", path=f"{target}/{lun}", hosts=[host])
    # libvirt: "Libvirt doesn't handle inline authentication" (its parser returns 1)
    draft.inline_auth = _get_str(name, obj, "user") is not None or _get_str(name, obj, "password") is not None
    return draft


def _json_nbd(name: str, obj: dict[str, object], driver: str) -> _Draft:
    """virStorageSourceParseBackingJSONNbd: server, or path (unix), or host/port."""
    path = _get_str(name, obj, "path")
    host = _get_str(name, obj, "host")
    server = obj.get("server")
    if path is None and host is None and not isinstance(server, dict):
        raise _refused(name, "json: nbd needs a 'server', 'path' or 'host'")
    draft = _Draft(protocol="nbd", path=_get_str(name, obj, "export"))
    if isinstance(server, dict):
        draft.hosts.append(_socket_address(name, server))
    elif path is not None:
        draft.hosts.append(_HostDraft(transport="unix", socket=path))
    else:
        draft.hosts.append(_HostDraft(name=host, port=_json_port(name, obj), transport="tcp"))
    return draft


def _json_sheepdog(name: str, obj: dict[str, object], driver: str) -> _Draft:
    """virStorageSourceParseBackingJSONSheepdog."""
    filename = _get_str(name, obj, "filename")
    if filename is not None:
        if "://" in filename:
            return _json_uri_str(name, filename, "sheepdog")
        raise _refused(name, "json: libvirt has no parser for the legacy non-URL sheepdog 'filename'")
    vdi = _get_str(name, obj, "vdi")
    if vdi is None:
        raise _refused(name, "json: sheepdog needs a 'vdi'")
    server = obj.get("server")
    return _Draft(
        protocol="sheepdog", path=vdi, hosts=[_socket_address(name, server if isinstance(server, dict) else None)]
    )


def _json_ssh(name: str, obj: dict[str, object], driver: str) -> _Draft:
    """virStorageSourceParseBackingJSONSSH ("user" only flags credentials)."""
    path = _get_str(name, obj, "path")
    host = _get_str(name, obj, "host")
    server = obj.get("server")
    if (host is None and not isinstance(server, dict)) or path is None:
        raise _refused(name, "json: ssh needs a 'host' or 'server', and a 'path'")
    draft = _Draft(protocol="ssh", path=path)
    if isinstance(server, dict):
        draft.hosts.append(_inet_address(name, server))
    else:
        draft.hosts.append(_HostDraft(name=host, port=_json_port(name, obj), transport="tcp"))
    return draft


def _json_rbd(name: str, obj: dict[str, object], driver: str) -> _Draft:
    """virStorageSourceParseBackingJSONRBD."""
    filename = _get_str(name, obj, "filename")
    if filename is not None:  # legacy syntax passed via 'filename'
        return _parse_rbd_colon(name, filename)
    pool = _get_str(name, obj, "pool")
    image = _get_str(name, obj, "image")
    if not pool or not image:
        raise _refused(name, "json: rbd needs a 'pool' and an 'image'")
    draft = _Draft(
        protocol="rbd",
        volume=pool,
        path=image,
        snapshot=_get_str(name, obj, "snapshot"),
        config=_get_str(name, obj, "conf"),
    )
    servers = obj.get("server")
    if isinstance(servers, list):
        draft.hosts.extend(_inet_address(name, s) for s in servers)
    return draft


def _json_vxhs(name: str, obj: dict[str, object], driver: str) -> _Draft:
    """virStorageSourceParseBackingJSONVxHS."""
    vdisk = _get_str(name, obj, "vdisk-id")
    server = obj.get("server")
    if vdisk is None or not isinstance(server, dict):
        raise _refused(name, "json: vxhs needs a 'vdisk-id' and a 'server'")
    return _Draft(protocol="vxhs", path=vdisk, hosts=[_inet_address(name, server)])


def _json_nfs(name: str, obj: dict[str, object], driver: str) -> _Draft:
    """virStorageSourceParseBackingJSONNFS (user and group are ids, kept by libvirt, not here)."""
    server = obj.get("server")
    if not isinstance(server, dict):
        raise _refused(name, "json: nfs needs a 'server'")
    ids = []
    for key in ("user", "group"):
        value = obj.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not -(2**31) <= value < 2**31:
            raise _refused(name, "json: nfs needs integer 'user' and 'group'")
        ids.append(f"+{value}")  # libvirt's g_strdup_printf("+%d")
    path = _get_str(name, obj, "path")
    if path is None:
        raise _refused(name, "json: nfs needs a 'path'")
    draft = _Draft(protocol="nfs", path=path, hosts=[_inet_address(name, server)])
    draft.nfs_user, draft.nfs_group = ids
    return draft


_NETWORK_DRIVERS = {
    "http": _json_url,
    "https": _json_url,
    "ftp": _json_url,
    "ftps": _json_url,
    "tftp": _json_url,
    "gluster": _json_gluster,
    "iscsi": _json_iscsi,
    "nbd": _json_nbd,
    "sheepdog": _json_sheepdog,
    "ssh": _json_ssh,
    "rbd": _json_rbd,
    "vxhs": _json_vxhs,
    "nfs": _json_nfs,
}


# --------------------------------------------------------------------------
# Messages

_REDACTIONS = (
    # URL user info: scheme://USER:PASSWORD@host
    (re.compile(r"//[^/?#\s]*@"), "//***@"),
    # rbd key=SECRET up to an unescaped ':'
    (re.compile(r"(:key=)(?:\\.|[^:\\])*"), r"\1***"),
    # json "password": "...", "file.key-secret": "...", ...
    (
        re.compile(
            r'("(?:[^"\\]*\.)?(?:password|password-secret|key-secret|cookie|cookie-secret|user|username|'
            r'proxy-username|proxy-password-secret)"\s*:\s*)"(?:\\.|[^"\\])*"'
        ),
        r'\1"***"',
    ),
)


def _redact(name: str) -> str:
    for pattern, replacement in _REDACTIONS:
        name = pattern.sub(replacement, name)
    return name


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
