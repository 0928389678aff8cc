"""The format registry: decoders for qcow2, qed and raw.

``REGISTRY`` is the probe order; raw comes last and accepts anything.  A
format module provides ``NAME``, ``sniff(buf) -> bool`` (on the first 512
bytes, as qemu probes) and ``decode(buf, file_size) -> DecodedImage``.
Adding a format is one module and one line here.
"""

from __future__ import annotations

from types import ModuleType

from imgchain.errors import UnsupportedFeatureError

from . import qcow2, qed, raw
from ._base import REFERENCE_KINDS, DecodedImage, NeedBytes, Reference, Window
from .foreign import sniff_foreign

__all__ = [
    "PROBE_SIZE",
    "REFERENCE_KINDS",
    "REGISTRY",
    "DecodedImage",
    "NeedBytes",
    "Reference",
    "Window",
    "by_name",
    "decoder_for",
    "names",
    "probe",
    "probe_name",
]

#: Bytes read to probe a format, as the issue and qemu's probes need.
PROBE_SIZE = 512

REGISTRY: tuple[ModuleType, ...] = (qcow2, qed, raw)

_BY_NAME = {m.NAME: m for m in REGISTRY}


def names() -> tuple[str, ...]:
    return tuple(_BY_NAME)


def by_name(name: str) -> ModuleType:
    """The decoder module for a format name; UnsupportedFeatureError for a
    name imgchain does not decode."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise UnsupportedFeatureError(
            name, f"format {name!r} is not one imgchain decodes ({', '.join(_BY_NAME)})"
        ) from None


def probe_name(buf: bytes, filename: str | None = None) -> str:
    """The name of the format qemu would probe a file whose first bytes are
    ``buf`` as: one of ours, or another format qemu knows (``vmdk`` ...).
    An empty file is raw."""
    head = buf[:PROBE_SIZE]
    for module in REGISTRY[:-1]:
        if module.sniff(head):
            return str(module.NAME)
    return sniff_foreign(head, filename) or str(raw.NAME)


def probe(buf: bytes, filename: str | None = None) -> ModuleType:
    """The decoder for a file whose first bytes are ``buf``, as qemu probes it.

    A file carrying the signature of a format qemu knows but imgchain does
    not decode is refused rather than called raw.
    """
    return decoder_for(probe_name(buf, filename))


def decoder_for(name: str) -> ModuleType:
    """The decoder of a probed format name (see :func:`probe_name`)."""
    module = _BY_NAME.get(name)
    if module is None:
        raise UnsupportedFeatureError(
            name, f"the file holds a {name} header; imgchain decodes only {', '.join(_BY_NAME)}"
        )
    return module
