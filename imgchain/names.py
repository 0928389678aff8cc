"""Backing file names: which are paths and which carry a protocol, and how a
relative name is joined to its overlay's name.  qemu and libvirt join them
differently, and both ways are here: :func:`combine` is qemu's (the
overlay's name as given, up to its last slash, then the backing name), and
:func:`libvirt_join` is libvirt's (the overlay's absolute path's directory,
a slash, the name).  Neither normalises ``..``: after a symlink it does not
mean "the folder above"."""

from __future__ import annotations

__all__ = ["combine", "has_protocol", "libvirt_join", "protocol_of", "strip_file_protocol"]


def protocol_of(name: str) -> str | None:
    """The protocol prefix of ``name`` (``nbd`` of ``nbd:host:10809``,
    ``json`` of ``json:{...}``), or None for a plain path.

    qemu's rule (``path_has_protocol``): a colon that comes before any
    slash.  So ``dir/a:b`` is a path and ``a:b`` is protocol ``a``.
    """
    for i, ch in enumerate(name):
        if ch == ":":
            return name[:i]
        if ch == "/":
            return None
    return None


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
