"""Backing file names: which are paths and which carry a protocol, and how a
relative name is joined to its overlay's name.  qemu and libvirt join them
differently, and both ways are here: :func:`combine` is qemu's (the
overlay's name as given, up to its last slash, then the backing name), and
:func:`libvirt_join` is libvirt's (the overlay's absolute path's directory,
a slash, the name).  Neither normalises ``..``: after a symlink it does not
mean "the folder above"."""

from __future__ import annotations

import json
from collections.abc import Callable

__all__ = ["combine", "has_protocol", "json_object", "libvirt_join", "protocol_of", "strip_file_protocol"]


def protocol_of(name: str) -> str | None:
    """The protocol prefix of ``name`` (``nbd`` of ``nbd:host:10809``,
    ``json`` of ``json:{...}``), or None for a plain path.

    qemu's rule (``path_has_protocol``): a colon that comes before any
    slash.  So ``dir/a:b`` is a path and ``a:b`` is protocol ``a``.
    """
    colon = name.find(":")
    if colon < 0 or name.find("/", 0, colon) >= 0:
        return None
    return name[:colon]


def has_protocol(name: str) -> bool:
    return protocol_of(name) is not None


def strip_file_protocol(name: str) -> str:
    """``file:x`` names the local file ``x`` (qemu strips the prefix)."""
    return name[5:] if name.startswith("file:") else name


def combine(overlay: str, backing: str) -> str:
    """The name qemu opens for ``backing`` named by the image ``overlay``
    (``bdrv_make_absolute_filename``): absolute names and names with a
    protocol as they are; relative names appended to the overlay's directory
    part as plain strings, unnormalised (``sub/o.qcow2`` + ``../b`` is
    ``sub/../b``), exactly as qemu-img prints them."""
    if backing.startswith("/") or has_protocol(backing):
        return backing
    slash = overlay.rfind("/")
    return overlay[: slash + 1] + backing


def libvirt_join(overlay: str, backing: str) -> str:
    """Where libvirt puts a relative backing name of the image at absolute
    path ``overlay`` (``virStorageSourceNewFromBackingRelative``): its
    directory, a slash, the name, nothing normalised (``/a/sub/../b``)."""
    if backing.startswith("/"):
        return backing
    directory = overlay.rsplit("/", 1)[0]
    return f"{directory}/{backing}" if directory else f"/{backing}"


def _unique(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            shown = key if len(key) <= 80 else key[:80] + "..."
            raise ValueError(f"not valid JSON: duplicate key {shown!r}")
        out[key] = value
    return out


def _no_constant(text: str) -> object:
    raise ValueError(f"not valid JSON: {text} is not JSON")


def json_object(text: str, parse_float: Callable[[str], object] | None = None) -> dict[str, object]:
    """The object of a ``json:`` name (``text``, after the prefix), read as
    qemu's and libvirt's parsers read it: strictly (a duplicate key, NaN or
    Infinity is no JSON), the top level an object.  ValueError with a
    one-line reason for anything else; callers bound the nesting first."""
    try:
        root = json.loads(text, object_pairs_hook=_unique, parse_constant=_no_constant, parse_float=parse_float)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON: {e.msg} at offset {e.pos}") from None
    except RecursionError:
        raise ValueError("not valid JSON (too deep, or a number too long)") from None
    except ValueError as e:
        if str(e).startswith("not valid JSON"):
            raise
        raise ValueError("not valid JSON (too deep, or a number too long)") from None
    if not isinstance(root, dict):
        raise ValueError("the top level is not an object")
    return root
