"""Findings: what is wrong with an image or its chain, as values.

Every finding has a stable kebab-case code from :data:`CODES`, which also
holds what each code means, why it matters and how to fix it (the README's
table is checked against it).  Nothing here does I/O: the audit
(``imgchain.audit``) walks the chains and asks this module what they mean.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field

from imgchain.backing_name import BackingNameError
from imgchain.chain import Chain, Layer
from imgchain.errors import (
    BackingLoopError,
    BackingMissingError,
    ChainTooDeepError,
    FormatError,
    ImageAccessError,
    ImgChainError,
    NotRegularFileError,
    OutsideRootError,
    UnsupportedFeatureError,
)
from imgchain.formats import qcow2
from imgchain.probe import FormatSource

__all__ = ["CODES", "Code", "Finding", "Severity", "chain_findings", "outside_roots"]


class Severity(enum.IntEnum):
    INFO = 1
    WARNING = 2
    ERROR = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Code:
    code: str
    severity: Severity  #: the usual severity (backing-format-unrecorded can be either)
    meaning: str
    why: str
    fix: str


CODES: dict[str, Code] = {
    c.code: c
    for c in (
        Code(
            "format-probe-mismatch",
            Severity.ERROR,
            "The content of an image probes as another format than the one declared for it (by `-f` or by "
            "the overlay's record).",
            "This is the format-probing attack (CVE-2008-2004, OSSA-2024-002): a guest writes a qcow2 header "
            "naming a host file into its raw disk, and any host that probes follows it. The finding shows "
            "what the header would make a prober open. A recorded qcow2 that holds raw data will not open.",
            "Never probe this image: use it only with its declared format, and find out how the header got "
            "there. If the declaration is wrong, correct it (`qemu-img rebase -u -F FMT`).",
        ),
        Code(
            "backing-format-unrecorded",
            Severity.WARNING,
            "An overlay names a backing file but records no format for it (a qcow2 without the backing "
            "format extension, a qed without the no-probe bit).",
            "Opening it needs probing. It is an error where the probed backing file has a backing file of its "
            "own: libvirt refuses that chain, and a hostile base could name any host file. A qed overlay can "
            "only record raw, so a qed on a qcow2 base always has this warning.",
            "Record the format: `qemu-img rebase -u -b BACKING -F FORMAT OVERLAY`.",
        ),
        Code(
            "backing-outside-root",
            Severity.ERROR,
            "With `--root`, a layer, a data file or a `json:` file path lies outside every root (after "
            "symlinks and `..` are resolved). It is not opened.",
            "An image that names `/etc/shadow`, `../../etc/passwd` or an innocent-looking symlink to a host "
            "file makes whoever opens the chain read that file into a guest.",
            "Remove or rebase the image; if the file is legitimate, move it under a root or add its directory "
            "with `--root`.",
        ),
        Code(
            "external-data-file",
            Severity.ERROR,
            "The qcow2 keeps its data in an external data file, named in its header.",
            "The guest's data lives in whatever file the header names (CVE-2024-32498, OSSA-2024-001): an "
            "uploaded image can name a host file or device.",
            "Accept only images without a data file from untrusted sources; convert with `qemu-img convert -O "
            "qcow2` into an image without one.",
        ),
        Code(
            "backing-network",
            Severity.WARNING,
            "A backing name is a network source (`nbd:`, `rbd:`, `http://`, a `json:` network driver ...).",
            "It cannot be verified offline; opening the chain connects to that host.",
            "Make sure the source is one you expect, or flatten the chain (`qemu-img convert`).",
        ),
        Code(
            "backing-name-invalid",
            Severity.ERROR,
            "A backing name with a protocol prefix that cannot be parsed (a malformed `json:` name, an unknown "
            "protocol).",
            "No tool can say what it refers to; qemu and libvirt may read it differently.",
            "Rebase the overlay onto a plain path.",
        ),
        Code(
            "backing-not-regular",
            Severity.ERROR,
            "A FIFO, socket, character device or directory stands where a backing file should be. It is never opened.",
            "Opening a FIFO blocks, and a device can have side effects or expose host data.",
            "Point the overlay at a real image file.",
        ),
        Code(
            "backing-loop",
            Severity.ERROR,
            "The chain comes back to an image already in it (same device and inode, whatever the spelling or symlink).",
            "The image cannot be opened; naive tools loop forever.",
            "Rebase one of the images onto the right backing file.",
        ),
        Code(
            "backing-missing",
            Severity.ERROR,
            "An overlay's backing file does not exist: the overlay has lost its base.",
            "The image cannot be opened.",
            "Restore the base, or rebase the overlay onto where it now is.",
        ),
        Code(
            "backing-too-deep",
            Severity.ERROR,
            "The chain has more layers than the depth limit (`--max-depth`, default 200 as in libvirt).",
            "libvirt refuses such chains, and every layer slows I/O.",
            "Flatten the chain (`qemu-img commit` or `convert`).",
        ),
        Code(
            "malformed-header",
            Severity.ERROR,
            "The header breaks its format's rules: qemu would refuse to open it.",
            "Nothing can use the image; a crafted header may aim at bugs in less careful parsers.",
            "Restore the image from a backup; do not use it.",
        ),
        Code(
            "unsupported-feature",
            Severity.ERROR,
            "A well-formed header that must be refused: an unknown incompatible feature, an unsupported "
            "version, compression type or cipher, or a format imgchain does not decode.",
            "qemu 7.2 would refuse it, or (for formats such as vmdk) imgchain cannot check it.",
            "Use a newer qemu if the feature is genuine, or convert the image.",
        ),
        Code(
            "image-unreadable",
            Severity.ERROR,
            "The file could not be read (permissions, I/O error, a file that changed while being read).",
            "It could not be checked.",
            "Check the file's permissions and the storage.",
        ),
        Code(
            "image-corrupt",
            Severity.ERROR,
            "The qcow2 corrupt bit is set: qemu found inconsistent metadata.",
            "qemu refuses to write to the image; data may be lost.",
            "`qemu-img check -r all` on a copy, then restore or repair.",
        ),
        Code(
            "image-dirty",
            Severity.WARNING,
            "The image was not closed cleanly: the qcow2 dirty bit, or QED's need-check bit.",
            "Its refcounts (qcow2 lazy refcounts) or tables (QED) may be inconsistent until checked.",
            "Run `qemu-img check -r all` while no VM uses it.",
        ),
    )
}


@dataclass(frozen=True, slots=True)
class Finding:
    code: str
    severity: Severity
    image: str  #: the image concerned
    chain: tuple[str, ...]  #: the layers from the top that led to it
    message: str
    #: Extra facts: the target a name points at, what a prober would open ...
    details: dict[str, str] = field(default_factory=dict, compare=False)


def _finding(code: str, image: str, chain: tuple[str, ...], message: str, **details: str) -> Finding:
    return Finding(code, CODES[code].severity, image, chain, message, dict(details))


def outside_roots(path: str, roots: tuple[str, ...]) -> bool:
    """Whether ``path``, with symlinks and ``..`` resolved, is outside every
    root (roots are real paths).  No file is opened."""
    real = os.path.realpath(path)
    return not any(real == root or real.startswith(root.rstrip("/") + "/") for root in roots)


def _data_file_path(image_path: str, name: str) -> str:
    return name if name.startswith("/") else os.path.join(os.path.dirname(image_path) or ".", name)


def layer_findings(layer: Layer, chain: tuple[str, ...], roots: tuple[str, ...]) -> list[Finding]:
    """What is wrong with one image by itself: its own header's bits and data file."""
    d = layer.image.decoded
    out = []
    name = layer.filename
    if d.corrupt:
        out.append(_finding("image-corrupt", name, chain, "the qcow2 corrupt bit is set"))
    if d.dirty:
        what = "the qcow2 dirty bit is set" if isinstance(d, qcow2.Qcow2Image) else "the QED need-check bit is set"
        out.append(_finding("image-dirty", name, chain, f"{what}: the image was not closed cleanly"))
    if isinstance(d, qcow2.Qcow2Image) and (d.has_data_file or d.data_file is not None):
        target = d.data_file or ""
        out.append(
            _finding(
                "external-data-file",
                name,
                chain,
                f"the data lives in an external data file {target!r}"
                if target
                else "the external data file bit is set but no data file is named",
                data_file=target,
            )
        )
        if target and roots and outside_roots(_data_file_path(name, target), roots):
            out.append(
                _finding(
                    "backing-outside-root",
                    name,
                    chain,
                    f"its data file {target!r} resolves to {os.path.realpath(_data_file_path(name, target))!r}, "
                    "outside every --root",
                    target=target,
                )
            )
    return out


def _mismatch(layer: Layer, chain: tuple[str, ...], declared_by: str) -> Finding | None:
    image = layer.image
    if image.probed_format == image.format:
        return None
    message = f"declared {image.format} by {declared_by}, but the content probes as {image.probed_format}"
    details = {"declared": image.format, "content": image.probed_format}
    content = image.content
    if content is not None and not isinstance(content, FormatError):
        opens = []
        if content.backing_filename:
            opens.append(f"backing file {content.backing_filename!r}")
            details["would_open"] = content.backing_filename
        if content.data_file:
            opens.append(f"data file {content.data_file!r}")
            details["would_open_data_file"] = content.data_file
        if opens:
            message += f": a host that probes it would open {' and '.join(opens)}"
    return _finding("format-probe-mismatch", layer.filename, chain, message, **details)


def _unrecorded(overlay: Layer, backing: Layer | None, chain: tuple[str, ...]) -> Finding:
    nested = backing is not None and backing.image.decoded.backing_filename is not None
    message = f"backing file {overlay.backing_filename!r} has no recorded format, so opening it needs probing"
    if backing is not None:
        message += f" (it probes as {backing.image.probed_format})"
    if overlay.format == "qed":
        # QED can record one backing format only (raw, by its no-probe bit):
        # an overlay on anything else cannot do better, so it stays a warning.
        message += "; a qed overlay can record no format but raw"
        if nested:
            message += ", and libvirt refuses to probe a backing file that has a backing file of its own"
        return _finding("backing-format-unrecorded", overlay.filename, chain, message)
    f = _finding("backing-format-unrecorded", overlay.filename, chain, message)
    if nested:
        message += "; the probed backing file has a backing file of its own, which libvirt refuses to probe"
        f = Finding(f.code, Severity.ERROR, f.image, f.chain, message, f.details)
    return f


def _error_finding(exc: ImgChainError, chain: tuple[str, ...], top: str) -> Finding:
    """The finding for what stopped a walk."""
    path = exc.path or top
    overlay = exc.referrer
    owner = overlay or path
    reason = str(exc)
    if isinstance(exc, OutsideRootError):
        message = f"backing file {path!r} {reason}" if overlay is not None else f"the image {reason}"
        return _finding("backing-outside-root", owner, chain, message, target=path)
    if isinstance(exc, BackingLoopError):
        return _finding("backing-loop", owner, chain, f"backing file {path!r} {reason}", target=path)
    if isinstance(exc, BackingMissingError):
        return _finding("backing-missing", owner, chain, f"backing file {path!r} does not exist", target=path)
    if isinstance(exc, ChainTooDeepError):
        return _finding("backing-too-deep", top, chain, reason)
    if isinstance(exc, NotRegularFileError):
        return _finding("backing-not-regular", owner, chain, f"{path!r} is {reason}", target=path)
    if isinstance(exc, BackingNameError):
        return _finding("backing-name-invalid", owner, chain, reason)
    if isinstance(exc, FormatError):
        declared = exc.probed_format is not None and exc.probed_format != exc.fmt and exc.fmt != "luks"
        if declared and (overlay is not None or path == top):
            who = f"{overlay!r}" if overlay is not None else "-f"
            message = f"declared {exc.fmt} by {who}, but the content probes as {exc.probed_format} ({reason})"
            return _finding(
                "format-probe-mismatch", path, chain, message, declared=exc.fmt, content=str(exc.probed_format)
            )
        code = "unsupported-feature" if isinstance(exc, UnsupportedFeatureError) else "malformed-header"
        return _finding(code, path, chain, reason)
    if isinstance(exc, ImageAccessError):
        return _finding("image-unreadable", path, chain, reason)
    return _finding("image-unreadable", path, chain, reason)


def chain_findings(walk: Chain, top: str, roots: tuple[str, ...]) -> list[Finding]:
    """Every finding along one walked chain, top first.  Findings about one
    image are repeated for every chain it is in: the audit keeps each once."""
    out: list[Finding] = []
    names = [layer.filename for layer in walk.layers]
    for i, layer in enumerate(walk.layers):
        chain = tuple(names[: i + 1])
        out.extend(layer_findings(layer, chain, roots))
        source = layer.image.format_source
        if source is not FormatSource.PROBED:
            declared_by = "-f" if source is FormatSource.GIVEN else repr(names[i - 1])
            mismatch = _mismatch(layer, chain, declared_by)
            if mismatch is not None:
                out.append(mismatch)
        if layer.backing_filename is not None and layer.image.decoded.backing_format is None:
            backing = walk.layers[i + 1] if i + 1 < len(walk.layers) else None
            # (a json: backing name may record the format itself)
            if backing is None or backing.image.format_source is not FormatSource.RECORDED:
                out.append(_unrecorded(layer, backing, (*chain, layer.full_backing_filename or "")))
    if walk.remote is not None:
        last = walk.layers[-1]
        chain = (*names, walk.remote.filename)
        out.append(
            _finding(
                "backing-network",
                last.filename,
                chain,
                f"backing file {walk.remote.filename!r} is a {walk.remote.protocol} source, "
                "which cannot be verified offline",
                target=walk.remote.filename,
            )
        )
    if walk.error is not None:
        target = walk.error.path
        chain = tuple(names) + ((target,) if target is not None and target not in names[-1:] else ())
        out.append(_error_finding(walk.error, chain, top))
    return out
