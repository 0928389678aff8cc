"""The format registry and qemu's probe.

``REGISTRY`` holds the formats imgchain decodes (raw last).  A format module provides
``NAME``, ``sniff(buf) -> bool`` and ``decode(data) -> DecodedImage`` (see
``_base``), and ``probe(buf) -> int`` where qemu's driver scores a file by
more than a magic number.  Adding a format is one module, one line in
``_MODULES`` and one in ``_PROBES``.

The probe is qemu's probe (``bdrv_probe_all``): every driver that has a
probe function scores the first 512 bytes of the file (zero-filled past the
end of a short one), and the highest score wins; raw scores 1, so a file no
driver claims is raw.  Ties go to the driver qemu asks first.  Every driver of
qemu 7.2 that has a probe takes part (qcow2, qed, qcow, vmdk, vpc, vhdx, vdi,
luks, parallels, bochs, cloop, and dmg by file name).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any, cast

from imgchain.errors import UnsupportedFeatureError

from . import qcow2, qed, raw
from ._base import REFERENCE_KINDS, DecodedImage, NeedBytes, Reference, Window, make_record

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
    "make_record",
    "names",
    "probe",
    "probe_name",
]

#: Bytes qemu probes a format on (BLOCK_PROBE_BUF_SIZE).
PROBE_SIZE = 512

#: Every format imgchain decodes: its name and its module (in ``formats/``).
#: The usual ones are imported with the package, the others when first needed.
#: Every format imgchain decodes: its name and its module (in ``formats/``).
#: The usual ones are imported with the package, the others when first needed.
_MODULES = {
    "qcow2": "qcow2",
    "qed": "qed",
    "qcow": "qcow1",
    "vmdk": "vmdk",
    "vpc": "vpc",
    "vhdx": "vhdx",
    "vdi": "vdi",
    "luks": "luks_raw",
    "parallels": "parallels",
    "bochs": "bochs",
    "cloop": "cloop",
    "dmg": "dmg",
    "raw": "raw",
}

_BY_NAME: dict[str, ModuleType] = {m.NAME: m for m in (qcow2, qed, raw)}

_ZEROS = bytes(PROBE_SIZE)

#: The order in which qemu 7.2 asks its drivers (``bdrv_probe_all`` keeps the
#: first of equal scores), as far as files that two probes both claim show
#: it: qed and parallels before vdi; vdi before qcow2, qcow, vpc, vhdx, luks
#: and vmdk; dmg before cloop.  (No other two probes can claim one file.)
ORDER = ("qed", "parallels", "vdi", "qcow2", "qcow", "vpc", "vhdx", "luks", "vmdk", "bochs", "dmg", "cloop")

#: The only first bytes of a file each probe can claim (vdi's signature is
#: at 0x40 and dmg goes by the file's name: those are asked for every file
#: that has them).
_FIRST_BYTES = {
    "qed": b"Q",
    "parallels": b"W",
    "qcow2": b"Q",
    "qcow": b"Q",
    "vpc": b"c",
    "vhdx": b"v",
    "luks": b"L",
    "vmdk": b"KC# v",  # KDMV, COWD, or '#' comment lines and lines of spaces, then "version="
    "bochs": b"B",
    "cloop": b"#",
}
_VDI_MAGIC = b"\x7f\x10\xda\xbe"  # at 0x40


def _module(name: str) -> ModuleType:
    module = _BY_NAME.get(name)
    if module is None:
        module = _BY_NAME[name] = importlib.import_module(f"{__name__}.{_MODULES[name]}")
    return module


def _probe_of(name: str) -> Callable[[bytes, str | None], int]:
    """Format ``name``'s probe, ``probe(head, filename) -> score``; a module
    not imported yet is imported at the first call."""
    if name in _BY_NAME:
        return cast(Callable[[bytes, str | None], int], _BY_NAME[name].probe)

    def first_call(head: bytes, filename: str | None) -> int:
        probe = cast(Callable[[bytes, str | None], int], _module(name).probe)
        _PROBE[name] = probe  # from now on, the probe itself
        return probe(head, filename)

    return first_call


_PROBE: dict[str, Callable[[bytes, str | None], int]] = {name: _probe_of(name) for name in ORDER}

#: First byte of the file -> the formats that may claim it, in qemu's order.
_BY_FIRST: dict[int, tuple[str, ...]] = {}
for _name in ORDER:
    for _first in _FIRST_BYTES.get(_name, b""):
        _BY_FIRST[_first] = (*_BY_FIRST.get(_first, ()), _name)


def __getattr__(name: str) -> Any:
    """``REGISTRY`` (every decoder module, raw last) and the lazily imported
    format modules (``formats.vmdk``, ``formats.vpc`` ...)."""
    if name == "REGISTRY":
        return tuple(_module(n) for n in _MODULES)
    modules = {module: fmt for fmt, module in _MODULES.items()}
    if name in modules:
        return _module(modules[name])
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
    """The name of the format qemu 7.2 would probe a file as, from its first
    bytes ``buf`` (and, for dmg, its name): the highest score of every
    driver's probe on the first 512 bytes, zero-filled past the end of a
    short file; the first asked of equal scores; raw (score 1) when no
    driver claims more.  An empty file is raw."""
    if not buf:
        return "raw"
    head = buf[:PROBE_SIZE]
    if len(head) < PROBE_SIZE:  # qemu's probe buffer is zero-filled past the end of the file
        head += _ZEROS[len(head) :]
    candidates = _BY_FIRST.get(head[0], ())
    if head.startswith(_VDI_MAGIC, 0x40) or (filename is not None and filename.endswith(".dmg")):
        extra = {"vdi"} if head.startswith(_VDI_MAGIC, 0x40) else set()
        if filename is not None and filename.endswith(".dmg"):
            extra.add("dmg")
        candidates = tuple(n for n in ORDER if n in extra or n in candidates)
    best, score = "raw", 1
    for name in candidates:
        s = _PROBE[name](head, filename)
        if s > score:
            if s >= 100:  # no probe scores more: the first asked to reach it wins
                return name
            best, score = name, s
    return best


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
