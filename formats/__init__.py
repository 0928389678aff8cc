"""The format registry and qemu's probe.

``REGISTRY`` holds the formats imgchain decodes (raw last).  A format module provides
``NAME``, ``sniff(buf) -> bool`` and ``decode(data) -> DecodedImage`` (see
``_base``), and ``probe(buf) -> int`` where qemu's driver scores a file by
more than a magic number.  Adding a format is one module, one line in
``_MODULES`` and one in ``_PROBES``.

The probe is qemu's probe (``bdrv_probe_all``): every driver that has a
probe function scores the first 512 bytes of the file (zero-filled past the
end of a short one), and the highest score wins; raw scores 1, so a file no
driver claims is raw.  Ties go to the driver qemu asks first.  Formats qemu
knows but imgchain does not decode yet are probed by ``foreign`` and refused
by name rather than called raw.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

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

#: Bytes qemu probes a format on (BLOCK_PROBE_BUF_SIZE).
PROBE_SIZE = 512

#: Every format imgchain decodes: its name and its module (in ``formats/``).
#: The usual ones are imported with the package, the others when first needed.
_MODULES = {"qcow2": "qcow2", "qed": "qed", "qcow": "qcow1", "vmdk": "vmdk", "raw": "raw"}

_BY_NAME: dict[str, ModuleType] = {m.NAME: m for m in (qcow2, qed, raw)}

_ZEROS = bytes(PROBE_SIZE)


def _module(name: str) -> ModuleType:
    module = _BY_NAME.get(name)
    if module is None:
        module = _BY_NAME[name] = importlib.import_module(f"{__name__}.{_MODULES[name]}")
    return module


def _lazy(name: str) -> Callable[[bytes], int]:
    """The probe of format ``name``, its module imported at the first call."""

    def first_call(head: bytes) -> int:
        probe: Callable[[bytes], int] = _module(name).probe
        for first, entries in _PROBES.items():  # from now on, the probe itself
            _PROBES[first] = tuple((n, probe if n == name else p) for n, p in entries)
        return probe(head)

    return first_call


#: The probes, first byte of the file -> (format, probe) for the formats that
#: can only match with that first byte, in the order qemu asks them.  (A
#: table by first byte keeps the probe one dict look-up for most files.)
_PROBES: dict[int, tuple[tuple[str, Callable[[bytes], int]], ...]] = {}
for _name, _probe, _firsts in (
    ("qcow2", qcow2.probe, b"Q"),
    ("qcow", _lazy("qcow"), b"Q"),  # the qcow2 magic with version 1
    ("qed", qed.probe, b"Q"),
    # KDMV, COWD, or a text descriptor: '#' comment lines and lines of spaces, then "version=".
    ("vmdk", _lazy("vmdk"), b"KC# v"),
):
    for _first in _firsts:
        _PROBES[_first] = (*_PROBES.get(_first, ()), (_name, _probe))


def __getattr__(name: str) -> Any:
    """``REGISTRY`` (every decoder module, raw last) and the lazily imported
    format modules (``formats.vmdk``)."""
    if name == "REGISTRY":
        return tuple(_module(n) for n in _MODULES)
    if name in ("qcow1", "vmdk"):
        return _module("qcow" if name == "qcow1" else name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def names() -> tuple[str, ...]:
    return tuple(_MODULES)


def by_name(name: str) -> ModuleType:
    """The decoder module for a format name; UnsupportedFeatureError for a
    name imgchain does not decode."""
    if name not in _MODULES:
        raise UnsupportedFeatureError(name, f"format {name!r} is not one imgchain decodes ({', '.join(_MODULES)})")
    return _module(name)


def probe_name(buf: bytes, filename: str | None = None) -> str:
    """The name of the format qemu would probe a file whose first bytes are
    ``buf`` as: one of ours, or another format qemu knows (``vpc`` ...).
    An empty file is raw."""
    if not buf:
        return str(raw.NAME)
    head = buf[:PROBE_SIZE]
    if len(head) < PROBE_SIZE:  # qemu's probe buffer is zero-filled past the end of the file
        head += _ZEROS[len(head) :]
    best, score = "", 0
    for name, probe in _PROBES.get(head[0], ()):
        s = probe(head)
        if s > score:
            if s >= 100:  # no probe scores more: the first to reach it wins
                return name
            best, score = name, s
    return sniff_foreign(head, filename) or best or str(raw.NAME)


def probe(buf: bytes, filename: str | None = None) -> ModuleType:
    """The decoder for a file whose first bytes are ``buf``, as qemu probes it.

    A file carrying the signature of a format qemu knows but imgchain does
    not decode is refused rather than called raw.
    """
    return decoder_for(probe_name(buf, filename))


def decoder_for(name: str) -> ModuleType:
    """The decoder of a probed format name (see :func:`probe_name`)."""
    module = _BY_NAME.get(name)
    if module is not None:  # (the usual case)
        return module
    if name not in _MODULES:
        raise UnsupportedFeatureError(
            name, f"the file holds a {name} header; imgchain decodes only {', '.join(_MODULES)}"
        )
    return _module(name)
