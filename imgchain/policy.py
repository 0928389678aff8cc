"""Findings: what is wrong with an image or its chain, as values.

Every finding has a stable kebab-case code from :data:`CODES`, which also
holds what each code means, why it matters and how to fix it (the README's
table is checked against it).  Nothing here does I/O: the audit
(``imgchain.audit``) reads the images, follows their chains, and asks this
module to word what it finds.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from imgchain.errors import (
    BackingLoopError,
    BackingMissingError,
    BackingNameError,
    FormatError,
    ImgChainError,
    NotRegularFileError,
    OutsideRootError,
    UnsupportedFeatureError,
)
from imgchain.formats import DecodedImage, qcow2
from imgchain.formats.polyglot import Signature

__all__ = [
    "CODES",
    "Code",
    "Finding",
    "Severity",
    "embedded_extent_finding",
    "error_finding",
    "finding",
    "header_findings",
    "mismatch_finding",
    "polyglot_finding",
    "unrecorded_finding",
]


class Severity(enum.IntEnum):
    INFO = 1
    WARNING = 2
    ERROR = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Code:
    """One finding code: its usual severity, and what the README says of it."""

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
            "A layer, a data file, or any file, folder or socket that a name makes qemu open lies outside the "
            "roots (after symlinks and `..` are resolved): the `--root` folders or, without `--root`, the folders "
            "named and the folders of the files named. It is not opened.",
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
            "qemu 7.2 would refuse it, or (for formats such as vpc) imgchain cannot check it yet.",
            "Use a newer qemu if the feature is genuine, or convert the image.",
        ),
        Code(
            "not-standalone",
            Severity.ERROR,
            "With `--standalone`, an image names another file: a backing file, an external data file, a vmdk "
            "extent or parent, a parent locator. Nothing it names is opened.",
            "The upload policy of Glance, Nova and Cinder: an image from a user must not reach outside itself, "
            "whether or not the file it names exists or lies inside a root.",
            "Flatten the image into one that stands alone: `qemu-img convert -O qcow2 IMAGE OUT`.",
        ),
        Code(
            "format-not-allowed",
            Severity.ERROR,
            "With `--formats`, an image (or a layer of its chain) is in a format not on the list.",
            "Every format is attack surface for the host that opens it; a cloud accepts the few it needs.",
            "Convert the image to an allowed format (`qemu-img convert -O raw`), or allow the format.",
        ),
        Code(
            "format-polyglot",
            Severity.ERROR,
            "The image's header is valid, and the bytes its format reserves for the header also hold another "
            "format's signature where that format's readers look (an ISO 9660 or UDF volume descriptor, a GPT "
            "header, another image format's header).",
            "qemu opens it as one format while firmware, ISO tools or another hypervisor see another: a file "
            "that passes one check and is used as something else. OpenStack's format_inspector refuses these.",
            "Do not use the file; convert it from a trusted source (`qemu-img convert` never makes these).",
        ),
        Code(
            "vmdk-embedded-extent",
            Severity.ERROR,
            "A sparse VMDK whose embedded descriptor names an extent that is not a plain file name (a path, a "
            "protocol name), several extents, or an extent that is not sparse. qemu 7.2 ignores those lines and "
            "reads the file itself.",
            "Other readers (VMware tools, converters, older qemu) follow the embedded extent lines, and OpenStack "
            "refuses such images: the same file means two different disks.",
            "Convert the image (`qemu-img convert -O vmdk`), which writes a descriptor naming the file alone.",
        ),
        Code(
            "internal-error",
            Severity.ERROR,
            "imgchain failed on this image: a bug, reported as a finding so that the rest of the audit goes on.",
            "The image was not fully checked.",
            "Treat the image as unchecked, and report the message to imgchain's developers.",
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
    """One finding of the audit, on one image."""

    code: str
    severity: Severity
    image: str  #: the image concerned
    chain: tuple[str, ...]  #: the layers from the top that led to it
    message: str
    #: Extra facts: the target a name points at, what a prober would open ...
    details: dict[str, Any] = field(default_factory=dict, compare=False)


def finding(code: str, image: str, chain: tuple[str, ...], message: str, **details: str | list[str]) -> Finding:
    """A finding of ``code``, with its usual severity."""
    return Finding(code, CODES[code].severity, image, chain, message, dict(details))


def header_findings(path: str, d: DecodedImage, chain: tuple[str, ...]) -> list[Finding]:
    """What is wrong with one image by itself: its header's bits and data file."""
    out = []
    if d.corrupt:
        out.append(finding("image-corrupt", path, chain, "the qcow2 corrupt bit is set"))
    if d.dirty:
        what = "the qcow2 dirty bit is set" if isinstance(d, qcow2.Qcow2Image) else "the QED need-check bit is set"
        out.append(finding("image-dirty", path, chain, f"{what}: the image was not closed cleanly"))
    if isinstance(d, qcow2.Qcow2Image) and (d.has_data_file or d.data_file is not None):
        target = d.data_file or ""
        message = (
            f"the data lives in an external data file {target!r}"
            if target
            else "the external data file bit is set but no data file is named"
        )
        out.append(finding("external-data-file", path, chain, message, data_file=target))
    return out


def mismatch_finding(
    path: str,
    declared: str,
    declared_by: str,
    probed: str,
    content: DecodedImage | FormatError | None,
    chain: tuple[str, ...],
    reason: str | None = None,
) -> Finding:
    """An image declared ``declared`` (by ``declared_by``) whose content
    probes as ``probed``; ``content`` is what a prober would decode."""
    message = f"declared {declared} by {declared_by}, but the content probes as {probed}"
    details: dict[str, str | list[str]] = {"declared": declared, "content": probed}
    refs = content.opens if isinstance(content, FormatError) else content.references if content is not None else ()
    if refs:
        for ref in refs:
            if ref.kind == "backing":
                details.setdefault("would_open", ref.name)
            elif ref.kind == "data-file":
                details.setdefault("would_open_data_file", ref.name)
        details["would_open_files"] = [ref.name for ref in refs]
        opens = " and ".join(f"{_KIND_WORDS.get(ref.kind, ref.kind)} {ref.name!r}" for ref in refs)
        message += f": a host that probes it would open {opens}"
    if reason is not None:
        message += f" ({reason})"
    return finding("format-probe-mismatch", path, chain, message, **details)


#: How a message names each kind of reference (see ``imgchain.formats.Reference``).
KIND_WORDS = {
    "backing": "backing file",
    "data-file": "data file",
    "extent": "extent file",
    "parent-locator": "parent",
}
_KIND_WORDS = KIND_WORDS


def embedded_extent_finding(path: str, d: Any, chain: tuple[str, ...]) -> Finding | None:
    """A sparse vmdk's embedded descriptor that names more than the file
    itself (see the code's text), or None.  Renamed files are fine: qemu and
    every reader take a bare name there for the file it is in."""
    embedded = getattr(d, "embedded", None)
    if embedded is None or d.descriptor is not None:  # (a descriptor qemu does read is not "embedded")
        return None
    lines = list(embedded.extents)
    odd = [
        e
        for e in lines
        if "/" in e.filename or "\\" in e.filename or ":" in e.filename or e.type not in ("SPARSE", "VMFSSPARSE")
    ]
    if len(lines) <= 1 and not odd:
        return None
    names = ", ".join(f"{e.type} {e.filename!r}" for e in (odd or lines))
    message = f"the embedded descriptor names {len(lines)} extent(s) ({names}) that qemu ignores but other readers open"
    return finding("vmdk-embedded-extent", path, chain, message, extents=[e.filename for e in lines])


def polyglot_finding(path: str, fmt: str, signatures: Iterable[Signature], chain: tuple[str, ...]) -> Finding:
    """A valid ``fmt`` image whose header bytes also hold ``signatures``."""
    found = list(signatures)
    what = "; ".join(f"{s.what} at {s.offset:#x}" for s in found)
    others = ",".join(dict.fromkeys(s.format for s in found))
    message = f"a valid {fmt} header, and its header area also holds {what}: other readers see another format"
    return finding("format-polyglot", path, chain, message, formats=f"{fmt},{others}")


def unrecorded_finding(
    overlay: str, overlay_format: str, name: str, probed: str | None, nested: bool, chain: tuple[str, ...]
) -> Finding:
    """An overlay that names ``name`` as its backing file without its format;
    ``probed`` is what that file probes as, ``nested`` whether it has a
    backing file of its own."""
    message = f"backing file {name!r} has no recorded format, so opening it needs probing"
    if probed is not None:
        message += f" (it probes as {probed})"
    if overlay_format == "qed":
        # QED can record one backing format only (raw, by its no-probe bit):
        # an overlay on anything else cannot do better, so it stays a warning.
        message += "; a qed overlay can record no format but raw"
        if nested:
            message += ", and libvirt refuses to probe a backing file that has a backing file of its own"
        return finding("backing-format-unrecorded", overlay, chain, message)
    if nested:
        message += "; the probed backing file has a backing file of its own, which libvirt refuses to probe"
        return Finding("backing-format-unrecorded", Severity.ERROR, overlay, chain, message, {})
    return finding("backing-format-unrecorded", overlay, chain, message)


def error_finding(exc: ImgChainError, path: str, owner: str | None, chain: tuple[str, ...]) -> Finding:
    """The finding for an error met at ``path`` (named as backing file by
    ``owner``, or named directly when ``owner`` is None)."""
    reason = str(exc)
    if isinstance(exc, OutsideRootError):
        message = f"backing file {path!r} {reason}" if owner is not None else f"the image {reason}"
        return finding("backing-outside-root", owner or path, chain, message, target=path)
    if isinstance(exc, BackingMissingError):
        if owner is None:
            return finding("image-unreadable", path, chain, reason)
        return finding("backing-missing", owner, chain, f"backing file {path!r} does not exist", target=path)
    if isinstance(exc, BackingLoopError):  # (a name whose symlinks loop)
        return finding("backing-loop", owner or path, chain, f"{path!r}: {reason}", target=path)
    if isinstance(exc, NotRegularFileError):
        return finding("backing-not-regular", owner or path, chain, f"{path!r} is {reason}", target=path)
    if isinstance(exc, BackingNameError):
        return finding("backing-name-invalid", owner or path, chain, reason)
    if isinstance(exc, FormatError):
        code = "unsupported-feature" if isinstance(exc, UnsupportedFeatureError) else "malformed-header"
        return finding(code, path, chain, reason)
    return finding("image-unreadable", path, chain, reason)
