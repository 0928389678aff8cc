"""``imgchain audit``: findings for images and whole image stores.

Each named path is an image or a directory (walked recursively; symlinked
directories are not followed).  Every image is walked down its backing
chain with the lenient walk, so that one broken image stops nothing but its
own chain.  Each image is read once however many chains share it (a cache
keyed by device and inode), and each finding is reported once, under the
image it concerns.  The backing graph says which images are the bases of
which overlays.

Safety: headers only (no snapshot table, no bitmap directory), the probe's
read cap per image, no FIFO or device ever opened, nothing executed; with
roots, nothing outside them is even stat-ed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from imgchain.chain import MAX_DEPTH, Chain, resolve_chain
from imgchain.errors import ImgChainError, OutsideRootError
from imgchain.policy import Finding, Severity, chain_findings, outside_roots
from imgchain.probe import FileInfo, FormatSource, Image, read_image

__all__ = ["AuditReport", "ImageEntry", "PathError", "audit", "discover"]


class PathError(ImgChainError):
    """A path named on the command line that cannot be audited (exit 2)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(reason)
        self.path = path


@dataclass(slots=True)
class ImageEntry:
    """One image of the report."""

    path: str
    named: bool  #: found under a named path (not only reached through a chain)
    format: str | None = None
    format_source: str | None = None
    probed_format: str | None = None
    virtual_size: int | None = None
    backing: str | None = None  #: the backing file's name as it resolves
    backing_format: str | None = None
    dependents: list[str] = field(default_factory=list)
    worst: Severity | None = None


@dataclass(slots=True)
class AuditReport:
    images: list[ImageEntry]
    findings: list[Finding]

    def worst(self) -> Severity | None:
        return max((f.severity for f in self.findings), default=None)


def discover(paths: Iterable[str]) -> Iterator[str]:
    """The files to audit: each named file, and every regular file under
    each named directory (sorted; symlinked directories not followed).
    A named path that cannot be read raises PathError."""
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise PathError(path, exc.strerror or str(exc)) from None
        if stat.S_ISDIR(st.st_mode):
            yield from _walk_dir(path)
        elif stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode):
            yield path
        else:
            raise PathError(path, "not a regular file, block device or directory; not opened")


def _walk_dir(top: str) -> Iterator[str]:
    try:
        entries = sorted(os.scandir(top), key=lambda e: e.name)
    except OSError as exc:
        raise PathError(top, exc.strerror or str(exc)) from None
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                yield from _walk_dir(entry.path)
            elif entry.is_file(follow_symlinks=True):
                yield entry.path
        except OSError:
            continue  # vanished while we looked


class _Reader:
    """Reads each image once, keyed by device, inode and how it is asked for."""

    def __init__(self) -> None:
        self.images: dict[tuple[int, int, str | None], Image] = {}
        self.errors: dict[tuple[int, int, str | None], ImgChainError] = {}

    def __call__(
        self, path: str, fmt: str | None, *, source: FormatSource | None, tables: bool, info: FileInfo
    ) -> Image:
        key = (info.dev, info.ino, fmt)
        cached = self.images.get(key)
        if cached is not None:
            return cached
        error = self.errors.get(key)
        if error is not None:
            raise _copy_error(error, path)
        try:
            image = read_image(path, fmt, source=source, tables=False, info=info)
        except ImgChainError as exc:
            self.errors[key] = exc
            raise
        self.images[key] = image
        return image


def _copy_error(error: ImgChainError, path: str) -> ImgChainError:
    """The cached error again, for a new walk to fill in its own context."""
    clone = error.__class__.__new__(error.__class__)
    clone.__dict__.update(error.__dict__)
    clone.args = error.args
    clone.path = path
    clone.referrer = None
    return clone


def _guard(roots: tuple[str, ...]) -> Callable[[str], None] | None:
    if not roots:
        return None

    def check(path: str) -> None:
        if outside_roots(path, roots):
            raise OutsideRootError(path, f"resolves to {os.path.realpath(path)!r}, outside every --root; not opened")

    return check


def audit(
    paths: Iterable[str],
    fmt: str | None = None,
    *,
    roots: Iterable[str] = (),
    max_depth: int = MAX_DEPTH,
    on_image: Callable[[int], None] | None = None,
) -> AuditReport:
    """Audit every image under ``paths``.  ``fmt`` declares the format of
    the named images, as a VM definition would.  ``on_image`` is called
    with the count of images done so far (for a progress display)."""
    real_roots = tuple(os.path.realpath(r) for r in roots)
    guard = _guard(real_roots)
    reader = _Reader()
    entries: dict[str, ImageEntry] = {}
    ids: dict[tuple[int, int], str] = {}  # identity -> the entry's path
    kept: dict[tuple[object, ...], Finding] = {}
    for done, top in enumerate(discover(paths), 1):
        walk = resolve_chain(top, fmt, max_depth=max_depth, strict=False, tables=False, read=reader, guard=guard)
        _record(walk, top, entries, ids)
        for finding in chain_findings(walk, top, real_roots):
            key = _key(finding, ids)
            old = kept.get(key)
            if old is None or len(finding.chain) < len(old.chain):
                kept[key] = finding
        if on_image is not None:
            on_image(done)
    findings = sorted(kept.values(), key=lambda f: (-f.severity, f.image, f.code, f.message))
    for f in findings:
        identity = _identity(f.image)
        entry = entries.get(ids.get(identity, f.image) if identity is not None else f.image)
        if entry is not None and (entry.worst is None or f.severity > entry.worst):
            entry.worst = f.severity
    return AuditReport(sorted(entries.values(), key=lambda e: e.path), findings)


def _key(finding: Finding, ids: dict[tuple[int, int], str]) -> tuple[object, ...]:
    """What makes two findings the same: the code, the image (by identity),
    and what it points at (by identity where it exists), else the message."""
    owner = _identity(finding.image) or finding.image
    target = finding.details.get("target")
    if target is not None:
        return (finding.code, owner, _identity(target) or target)
    return (finding.code, owner, finding.message)


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino)


def _record(walk: Chain, top: str, entries: dict[str, ImageEntry], ids: dict[tuple[int, int], str]) -> None:
    """Add the walk's images to the report (each once) and its edges to the graph."""
    previous: ImageEntry | None = None
    for i, layer in enumerate(walk.layers):
        identity = layer.image.file.identity
        path = ids.get(identity)
        if path is None:
            path = layer.filename
            ids[identity] = path
            d = layer.image.decoded
            entries[path] = ImageEntry(
                path=path,
                named=i == 0,
                format=layer.format,
                format_source=layer.image.format_source.value,
                probed_format=layer.image.probed_format,
                virtual_size=d.virtual_size,
                backing=layer.full_backing_filename,
                backing_format=d.backing_format,
            )
        entry = entries[path]
        entry.named = entry.named or i == 0
        if previous is not None and previous.path not in entry.dependents:
            entry.dependents.append(previous.path)
        previous = entry
    if not walk.layers:  # the top itself could not be read: still an image of the store
        entries.setdefault(top, ImageEntry(path=top, named=True))
