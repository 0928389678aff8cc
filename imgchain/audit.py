"""``imgchain audit``: findings for images and whole image stores.

The store is read as a graph, in two passes:

1. every file under the named paths is read once (probed, or as ``-f``
   declares it) into a small node: its format, what its content probes as,
   its backing name and recorded format, and what is wrong with its header;
2. from the named images, breadth first, each backing name is resolved to
   a node (read once more only if it lies outside the named paths, and only
   within ``max_depth`` layers of a named image): the edge's own problems
   (a missing, special, outside-root, network or unrecorded-format backing
   file; a content that does not probe as recorded) are found there.

Then each named image's chain is followed along the edges for loops (by
device and inode) and depth.  Every file is read once, whatever number of
chains share it: again only when it is asked for in another format, or
reached from another folder while its backing name is relative (then the
folder decides which backing file it names).  The report lists each file
once; every finding is reported once, under the image it concerns; memory
is one small entry per image.

Safety: headers only (no snapshot table, no bitmap directory), the probe's
read cap per image, no FIFO or device ever opened, nothing executed; with
roots, nothing outside them is stat-ed or opened.
"""

from __future__ import annotations

import os
import stat
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import NamedTuple

from imgchain.chain import MAX_DEPTH
from imgchain.errors import (
    BackingNameError,
    ChainError,
    FormatError,
    ImgChainError,
    OutsideRootError,
    PathError,
    shown,
)
from imgchain.formats import Reference, make_record
from imgchain.names import combine, protocol_of
from imgchain.parallel import ordered_map
from imgchain.policy import (
    KIND_WORDS,
    Finding,
    Severity,
    embedded_extent_finding,
    error_finding,
    finding,
    header_findings,
    mismatch_finding,
    polyglot_finding,
    unrecorded_finding,
)
from imgchain.probe import FileInfo, Image, Roots, read_extent_header, read_image, same_file, stat_image
from imgchain.qemu_names import QemuName, Target, qemu_opens

__all__ = ["AuditReport", "ImageEntry", "PathError", "audit", "default_roots", "discover"]


@dataclass(slots=True)
class AuditReport:
    """Every image the audit read, once each, and every finding, once each."""

    images: list[ImageEntry]
    findings: list[Finding]

    def worst(self) -> Severity | None:
        return max((f.severity for f in self.findings), default=None)


def discover(
    paths: Iterable[str], unreadable: list[tuple[str, str]] | None = None, exclude: Iterable[str] = ()
) -> Iterator[tuple[str, bool]]:
    """The files to audit, as (path, is a symlink): each named file, and
    every file under each named directory (sorted, depth first; symlinks are
    yielded, not followed, and left to the caller's root check).  A path that
    cannot be read (named, or a folder below a named one), or a named path
    that is no file, device or folder, is added to ``unreadable`` as (path,
    reason) and the walk goes on; without ``unreadable``, a named one raises
    PathError.

    ``exclude``: glob patterns (``fnmatch``, where ``*`` also matches ``/``).
    A file or folder under a named directory is left out (a folder is not
    walked) when its path relative to that directory matches one, or, for a
    pattern without ``/``, when its own name does.  Named paths are never
    left out."""
    patterns = tuple(exclude)
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as exc:
            if unreadable is None:
                raise PathError(path, exc.strerror or str(exc)) from None
            unreadable.append((path, exc.strerror or str(exc)))
            continue
        if stat.S_ISDIR(st.st_mode):
            yield from _walk_dir(path, unreadable, patterns)
        elif stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode):
            yield path, False
        else:
            why = "not a regular file, block device or directory; not opened"
            if unreadable is None:
                raise PathError(path, why)
            unreadable.append((path, why))


def _excluded(relative: str, name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(relative, p) or ("/" not in p and fnmatchcase(name, p)) for p in patterns)


def _walk_dir(
    top: str, unreadable: list[tuple[str, str]] | None, exclude: tuple[str, ...] = ()
) -> Iterator[tuple[str, bool]]:
    stack = [(top, "")]  # (folder, its path relative to top, with a trailing /)
    while stack:
        folder, relative = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if folder == top and unreadable is None:
                raise PathError(top, exc.strerror or str(exc)) from None
            if unreadable is not None:
                unreadable.append((folder, exc.strerror or str(exc)))
            continue
        subfolders = []
        for entry in entries:
            if exclude and _excluded(relative + entry.name, entry.name, exclude):
                continue
            try:
                if entry.is_symlink():
                    yield entry.path, True
                elif entry.is_file(follow_symlinks=False):
                    yield entry.path, False
                elif entry.is_dir(follow_symlinks=False):
                    subfolders.append((entry.path, relative + entry.name + "/"))
            except OSError:
                continue  # vanished while we looked
        stack.extend(reversed(subfolders))


class ImageEntry:
    """One image of the audit: one file read in one format, with what the
    report says of it and what the walk needs, and nothing more (a store may
    hold a hundred thousand of them).

    Public: ``path``, ``named`` (found under a named path, not only reached
    through a chain), ``format`` (None if it could not be read),
    ``format_source`` ("given", "recorded" or "probed"), ``probed_format``,
    ``virtual_size``, ``backing`` (the backing name as it resolves),
    ``backing_format``, ``dependents`` (the overlays whose backing file this
    is) and ``worst`` (the worst severity of its findings).
    """

    __slots__ = (
        "_dependents",
        "asked",
        "backing_format",
        "backing_name",
        "depth",
        "flags",
        "format",
        "format_source",
        "next",
        "path",
        "probed_format",
        "via",
        "virtual_size",
        "worst",
    )

    NAMED, EXPANDED, TRUNCATED, MEASURED, FAILED, OVERLAY, ON_LOOP = 1, 2, 4, 8, 16, 32, 64

    def __init__(self, path: str, source: str | None, asked: str | None) -> None:
        self.path = path
        self.format_source = source
        self.asked = asked  #: the format it was read as (None: probed)
        self.flags = 0
        #: Layers from a named image while the edges are followed; then, once
        #: MEASURED, the layers of its own chain (LOOP on a loop).
        self.depth = 0
        self.via: ImageEntry | None = None
        self.next: ImageEntry | None = None
        self.format: str | None = None
        self.probed_format: str | None = None
        self.virtual_size: int | None = None
        self.backing_name: str | None = None
        self.backing_format: str | None = None
        self._dependents: list[ImageEntry] | None = None
        self.worst: Severity | None = None

    @property
    def named(self) -> bool:
        return bool(self.flags & self.NAMED)

    @property
    def backing(self) -> str | None:
        """The backing file's name as it resolves (made when asked for)."""
        return None if self.backing_name is None else combine(self.path, self.backing_name)

    @property
    def dependents(self) -> list[str]:
        """The paths of the overlays whose backing file this is, sorted."""
        overlays = self._dependents
        return sorted([d.path for d in overlays]) if overlays else []

    @property
    def dependent_entries(self) -> list[ImageEntry]:
        """The overlays themselves, in path order."""
        return sorted(self._dependents or (), key=lambda d: d.path)

    @property
    def truncated(self) -> bool:
        """Whether the walk stopped below this image at the depth limit."""
        return bool(self.flags & self.TRUNCATED)

    @property
    def on_loop(self) -> bool:
        """Whether this image is on a loop of backing files."""
        return bool(self.flags & self.ON_LOOP)

    @property
    def is_overlay(self) -> bool:
        """Whether this image's backing file is an image of the report."""
        return bool(self.flags & self.OVERLAY)

    def add_dependent(self, overlay: ImageEntry) -> None:
        """An overlay names this image as its backing file (each overlay has
        one backing edge, so it comes here once)."""
        if self._dependents is None:
            self._dependents = []
        self._dependents.append(overlay)
        overlay.flags |= self.OVERLAY

    def decodes_as(self, fmt: str | None) -> bool:
        """Whether reading this file as ``fmt`` (None: probed) gives the
        same decoding as this entry's."""
        if self.flags & self.FAILED:
            return self.asked == fmt
        return self.format == (fmt if fmt is not None else self.probed_format)

    @property
    def relative_backing(self) -> bool:
        """Whether the backing name resolves against the folder of the path
        the image was reached by (so two paths may mean two chains)."""
        name = self.backing_name
        return name is not None and not name.startswith("/") and protocol_of(name) is None

    def chain(self) -> tuple[str, ...]:
        """The layers from a named image down to this one."""
        names: list[str] = []
        node: ImageEntry | None = self
        while node is not None:  # via always points at an entry made earlier: no loop
            names.append(node.path)
            node = node.via
        return tuple(reversed(names))


def _folder(path: str) -> str:
    """The folder part of a path, as qemu joins a relative name to it."""
    return path.rpartition("/")[0] or "."


def _identity(info: FileInfo) -> int:
    return info.dev << 64 | info.ino


class Facts(NamedTuple):
    """What one reading of one file gives the audit, worked out from the
    image alone (so a helper process can; see :func:`named_facts`)."""

    ident: int  #: the file's identity (device and inode)
    format: str
    probed_format: str
    virtual_size: int
    backing_name: str | None
    backing_format: str | None
    #: The image's own findings, each with its key after the identity (see _Audit.add).
    findings: tuple[tuple[Finding, tuple[str, ...]], ...]
    #: The files it names, where the audit has to look at them: its side
    #: references (data file, extents ...), or all of them under --standalone.
    refs: tuple[Reference, ...]


def facts_of(
    image: Image,
    fmt: str | None,
    chain: tuple[str, ...],
    by: str,
    allowed: frozenset[str] | None,
    standalone: bool,
) -> Facts:
    """The :class:`Facts` of ``image``, read as ``fmt`` (None: probed) by
    the way ``by`` (``-f``, or the overlay that records it) at the end of ``chain``."""
    path, d = image.path, image.decoded
    findings: list[tuple[Finding, tuple[str, ...]]] = [(f, (f.message,)) for f in header_findings(path, d, chain)]
    if image.polyglot:
        findings.append((polyglot_finding(path, image.format, image.polyglot, chain), ()))
    if image.format == "vmdk":
        embedded = embedded_extent_finding(path, d, chain)
        if embedded is not None:
            findings.append((embedded, ()))
    if allowed is not None and image.format not in allowed:
        message = f"the image is {image.format}, which is not among the allowed formats ({', '.join(sorted(allowed))})"
        findings.append((finding("format-not-allowed", path, chain, message, format=image.format), ()))
    # (a declared format that decodes, over content that probes as raw, such as a fixed VHD whose
    # footer is at the end, names no other format's files: a prober would open nothing more)
    if fmt is not None and image.probed_format not in (fmt, "raw"):
        mismatch = mismatch_finding(path, fmt, by, image.probed_format, image.content, chain)
        findings.append((mismatch, (fmt,)))
    refs = d.references
    if refs and not standalone and all(ref.kind == "backing" for ref in refs):
        refs = ()  # (the backing file is the edge, followed by expand)
    return make_record(
        Facts,
        (
            _identity(image.file),
            image.format,
            image.probed_format,
            d.virtual_size,
            d.backing_filename,
            d.backing_format,
            tuple(findings) if findings else (),
            refs,
        ),
    )


def named_facts(
    fmt: str | None, allowed: frozenset[str] | None, standalone: bool
) -> Callable[[str | None], Facts | None]:
    """The work of a helper process: the :class:`Facts` of a file found
    under the named paths (as :meth:`_Audit.read_named` reads it), or None
    where the audit itself is to read it (a file behind a symlink, given as
    None, whose root check comes first; any file that does not read
    cleanly, whose error the audit reports as it always does)."""

    def work(path: str | None) -> Facts | None:
        if path is None:
            return None
        try:
            return facts_of(read_image(path, fmt, tables=False, scan=True), fmt, (path,), "-f", allowed, standalone)
        except Exception:
            return None

    return work


class _Audit:
    def __init__(
        self,
        fmt: str | None,
        roots: tuple[str, ...],
        max_depth: int,
        *,
        typed_roots: tuple[str, ...] = (),
        default_roots: bool = False,
        standalone: bool = False,
        allowed: frozenset[str] | None = None,
    ) -> None:
        self.fmt = fmt
        #: The roots as real paths, and as typed (made absolute, not resolved:
        #: their own components may be looked at, see probe.Roots).
        self.roots = roots
        self.typed_roots = typed_roots
        self.root_check = Roots(roots, typed_roots)
        #: No --root was given: the roots are the named folders and the folders of the named files.
        self.default_roots = default_roots
        self.standalone = standalone
        self.allowed = allowed
        self.max_depth = max_depth
        #: The readings of each file, by identity: one entry (the usual case,
        #: kept without a list), or a list of them when the file is read in
        #: another format, or reached from another folder with a relative
        #: backing name.
        self.nodes: dict[int, ImageEntry | list[ImageEntry]] = {}
        self.findings: dict[tuple[object, ...], Finding] = {}
        self.sizes: dict[int, int] = {}
        #: Files an image names as its vmdk extents, by identity; and the
        #: findings of named files that only open as such extents, kept
        #: until the end: they stand only if no image names the file.
        self.extent_idents: set[int] = set()
        self.orphans: dict[int, Finding] = {}
        #: Entries read for a reference other than the chain's next layer
        #: (an image a json: name opens as well): expanded in their turn.
        self.pending: list[ImageEntry] = []
        #: The files found in the named folders (not through a symlink), by
        #: path: a backing name that resolves to one of these exact paths is
        #: that very file, already inside the roots and read (most edges of
        #: a store), so it needs no further look at the file system.
        self.found: dict[str, ImageEntry] = {}

    def failed(self, path: str, exc: Exception) -> None:
        """What imgchain raised on ``path`` without meaning to: an
        ``internal-error`` finding, and the audit goes on with the other
        images (the callers catch every Exception around each image's step)."""
        message = (
            f"imgchain failed on this image ({type(exc).__name__}: {shown(str(exc))}); "
            "it was not fully checked (please report this)"
        )
        self.add(finding("internal-error", path, (path,), message), path)

    # -- findings --------------------------------------------------------------------------

    def add(self, f: Finding, *key: object) -> None:
        """Keep ``f`` once: by ``key`` when given, else by code, image and message."""
        k = (f.code, *key) if key else (f.code, f.image, f.message)
        old = self.findings.get(k)
        if old is None or len(f.chain) < len(old.chain):
            self.findings[k] = f

    # -- reading --------------------------------------------------------------------------------

    def node(
        self,
        path: str,
        info: FileInfo | None,
        fmt: str | None,
        source: str,
        via: ImageEntry | None,
        facts: Facts | None = None,
    ) -> ImageEntry:
        """The entry of ``info``'s file read as ``fmt`` (None: probed), read
        now if it has not been yet; or, given ``facts`` (a helper process's
        reading of a named file), the entry of that file."""
        if facts is not None:
            ident = facts.ident
        else:
            assert info is not None  # (a file not read by a helper is stat-ed first)
            ident = _identity(info)
        readings = self.nodes.get(ident)
        for node in readings if isinstance(readings, list) else (readings,) if readings else ():
            # (a relative backing name means another file from another folder)
            if node.decodes_as(fmt) and (not node.relative_backing or same_file(_folder(node.path), _folder(path))):
                return node
        node = ImageEntry(path, source, fmt)
        node.via = via
        node.depth = via.depth + 1 if via is not None else 0
        if readings is None:
            self.nodes[ident] = node
        elif isinstance(readings, list):
            readings.append(node)
        else:
            self.nodes[ident] = [readings, node]
        chain = (path,) if via is None else node.chain()
        try:
            if facts is None:
                image = read_image(path, fmt, tables=False, info=info, scan=True)
                by = "-f" if via is None else repr(via.path)
                facts = facts_of(image, fmt, chain, by, self.allowed, self.standalone)
        except FormatError as exc:
            assert info is not None  # (facts are given only for an image that was read)
            node.probed_format, node.format_source = exc.probed_format, None
            if exc.opens and exc.probed_format == (fmt or exc.probed_format):
                # qemu refuses the image, but what its header names is still opened by qemu before it
                # refuses it (vmdk extents), or by other hypervisors (a VHDX's parent locators)
                if self.standalone:
                    self.not_standalone(node, exc.opens, chain)
                else:
                    for ref in exc.opens:
                        self.side_reference(node, ref, chain)
            if fmt is None and via is None and exc.probed_format == "vmdk" and self.extent_of_another(path, info):
                # A sparse extent of a vmdk (qemu cannot open it alone): reported only if no image names it.
                node.format = "vmdk"
                self.orphans[ident] = error_finding(exc, path, None, chain)
                return node
            node.flags |= ImageEntry.FAILED
            if fmt is not None and exc.probed_format not in (None, fmt):
                by = "-f" if via is None else repr(via.path)
                self.add(mismatch_finding(path, fmt, by, exc.probed_format, None, chain, str(exc)), ident, fmt)
            else:
                self.add(error_finding(exc, path, None, chain), ident)
            return node
        except ImgChainError as exc:
            node.format_source = None
            node.flags |= ImageEntry.FAILED
            self.add(error_finding(exc, path, None, chain), ident)
            return node
        node.format, node.probed_format = facts.format, facts.probed_format
        size = facts.virtual_size
        node.virtual_size = self.sizes.setdefault(size, size)  # one int per size, not per image
        node.backing_name = facts.backing_name
        # One string for each format name, not one per image (a store has many).
        node.backing_format = None if facts.backing_format is None else sys.intern(facts.backing_format)
        for f, key in facts.findings:
            self.add(f, ident, *key)
        if facts.refs:
            if self.standalone:
                self.not_standalone(node, facts.refs, chain)
                node.flags |= ImageEntry.EXPANDED  # nothing it names is followed
            else:
                for ref in facts.refs:
                    if ref.kind != "backing":  # (the backing file is the edge, followed by expand)
                        self.side_reference(node, ref, chain)
        return node

    def extent_of_another(self, path: str, info: FileInfo) -> bool:
        """Whether ``path``, which does not open as a vmdk image, has a vmdk
        sparse extent's header (the files of a twoGbMaxExtentSparse set)."""
        try:
            read_extent_header(path, info)
        except ImgChainError:
            return False
        return True

    def stat(self, path: str, owner: ImageEntry | None, *, inside: bool = False) -> FileInfo | None:
        """``stat`` a would-be image, or record why it cannot be one.
        ``inside``: the path is known to lie inside the roots already."""
        try:
            if not inside:
                self.check_roots(path)
            return stat_image(path)
        except ChainError as exc:
            chain = (*owner.chain(), path) if owner is not None else (path,)
            owner_path = owner.path if owner is not None else None
            self.add(error_finding(exc, path, owner_path, chain), owner_path or path, path)
            return None

    @property
    def outside_what(self) -> str:
        """How the roots are named in a message, with how to widen them."""
        if self.default_roots:
            return "outside the folders named and the folders of the files named (widen them with --root DIR)"
        return "outside every --root"

    def check_roots(self, path: str) -> None:
        """OutsideRootError if ``path`` leads outside the roots; BackingLoopError
        if its symlinks loop."""
        if self.roots:
            where = self.root_check.outside(path)
            if where is not None:
                raise OutsideRootError(path, f"resolves to {where!r}, {self.outside_what}; not opened")

    def not_standalone(self, node: ImageEntry, refs: tuple[Reference, ...], chain: tuple[str, ...]) -> None:
        for ref in refs:
            message = (
                f"names {KIND_WORDS.get(ref.kind, ref.kind)} {ref.name!r}: under --standalone an image must "
                "not name any other file (not followed)"
            )
            f = finding("not-standalone", node.path, chain, message, target=ref.name, kind=ref.kind)
            self.add(f, node.path, ref)

    def side_reference(self, node: ImageEntry, ref: Reference, chain: tuple[str, ...]) -> None:
        """A file the image names besides its backing file (a data file, a
        vmdk extent ...): everything qemu would open for it is held to the
        roots; nothing is opened."""
        word = KIND_WORDS.get(ref.kind, ref.kind)
        if ref.kind == "parent-locator":
            self.parent_locator(node, ref.name, (*chain, ref.name))
            return
        model = self.model(node, ref.name, ref.format, (*chain, ref.name), word)
        if model is None:
            return
        for target in model.targets:
            if target.role != "device-probe":
                # A plain name is opened from qemu's working folder when the reference says so (a data file).
                cwd = target.relative_to == "cwd" or ref.relative_to == "cwd"
                self.hold(
                    node, target, ref.name, word, (*chain, target.path), cwd=cwd, open_images=False, kind=ref.kind
                )
        if model.network:
            what = "; ".join(model.network)
            message = f"{word} {ref.name!r} is a network source ({what}), which cannot be verified offline"
            self.add(finding("backing-network", node.path, (*chain, ref.name), message, target=ref.name))

    def parent_locator(self, node: ImageEntry, name: str, chain: tuple[str, ...]) -> None:
        """A VHD or VHDX differencing disk's parent locator: qemu ignores or
        refuses it, but Hyper-V and VirtualBox open the file it names.  A
        Windows path is read as Windows reads it: a relative one (``..\\b.vhd``)
        from the image's folder, a drive path (``C:\\...``) outside every
        root; a ``file://`` URL as its path."""
        path: str | None = name
        if name.startswith("file://"):
            rest = name[len("file://") :]
            path = rest[rest.find("/") :] if "/" in rest else None
        elif (len(name) >= 2 and name[1] == ":") or name.startswith("\\\\"):
            path = None  # a drive letter or a UNC share: a Windows host's file
        else:
            path = name.replace("\\", "/")
        if path is None:
            message = f"parent locator {name!r} names a Windows host's file, which no root can hold"
            self.add(finding("backing-outside-root", node.path, chain, message, target=name), node.path, name)
            return
        target = Target("file", path, "", "image", False, None, "overlay", False)
        self.hold(node, target, name, "parent locator", chain, cwd=False, open_images=False, kind="parent-locator")

    def model(
        self, node: ImageEntry, name: str, recorded: str | None, chain: tuple[str, ...], word: str
    ) -> QemuName | None:
        """What qemu opens for ``name`` (see ``imgchain.qemu_names``), or
        None, with a ``backing-name-invalid`` finding, where that cannot be
        modelled completely."""
        try:
            return qemu_opens(name, recorded)
        except BackingNameError as exc:
            message = f"{word} name: {exc.reason}: {exc.backing_name!r}"
            self.add(finding("backing-name-invalid", node.path, chain, message, target=name), node.path, name)
            return None

    def hold(
        self,
        node: ImageEntry,
        target: Target,
        name: str,
        word: str,
        chain: tuple[str, ...],
        *,
        cwd: bool,
        open_images: bool,
        kind: str = "",
    ) -> None:
        """Hold one file, folder or socket that ``node``'s name ``name`` makes
        qemu open to the roots.  With ``open_images``, a file qemu reads as an
        image (a ``json:`` name's own ``backing``, quorum children ...) is
        read too, and its chain followed; nothing else is ever opened."""
        path = target.path
        what = f"{word} {name!r}" if not target.option else f"{word} {name!r} (option {target.option!r})"
        if not path.startswith("/"):
            if cwd:
                message = (
                    f"{what} names {target.kind} {path!r} by a relative name, which qemu resolves against the "
                    "working folder of whatever opens the image: it cannot be held to the roots"
                )
                self.add(finding("backing-outside-root", node.path, chain, message, target=path), node.path, name, path)
                return
            path = combine(node.path, path)
        try:
            self.check_roots(path)
        except ChainError as exc:
            if isinstance(exc, OutsideRootError):
                access = "writes to" if target.writable else "opens"
                message = f"{what}: qemu {access} {target.kind} {path!r}, which {exc.reason}"
                self.add(finding("backing-outside-root", node.path, chain, message, target=path), node.path, name, path)
            else:
                self.add(error_finding(exc, path, node.path, chain), node.path, name, path)
            return
        if target.kind != "file":
            return  # a folder or a socket inside the roots: never opened
        info = self.stat(path, node)
        if info is not None and kind == "extent":
            self.extent_idents.add(_identity(info))
        if info is None or not open_images or target.role == "image":
            return
        if target.follows_backing or target.format is not None:
            entry = self.node(path, info, target.format, "recorded" if target.format else "probed", node)
            if not entry.flags & ImageEntry.EXPANDED:
                self.pending.append(entry)

    # -- the two passes ---------------------------------------------------------------------------

    def read_named(self, path: str, is_link: bool, facts: Facts | None = None) -> ImageEntry | None:
        """The entry of a file found under the named paths (``facts``: its
        reading, made already by a helper process)."""
        if facts is not None and not is_link:
            node = self.node(path, None, self.fmt, "given" if self.fmt else "probed", None, facts)
            return self.mark_named(node, path, is_link)
        if is_link:
            # A symlink in a folder: checked against the roots before anything
            # is looked at through it, then followed to files, not folders.
            try:
                self.check_roots(path)
                mode = os.stat(path).st_mode
                if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
                    return None  # a link to a folder, FIFO or device: not an image, as those are not
            except ChainError as exc:  # outside the roots, or a loop of symlinks
                self.add(error_finding(exc, path, None, (path,)), path, path)
                return None
            except OSError:
                pass  # dangling: the stat below reports it
        # A named file was checked against the roots (audit()), and so was the folder a file not
        # behind a symlink was found in; a symlink was checked above.
        info = self.stat(path, None, inside=True)
        if info is None:
            return None
        return self.mark_named(self.node(path, info, self.fmt, "given" if self.fmt else "probed", None), path, is_link)

    def mark_named(self, node: ImageEntry, path: str, is_link: bool) -> ImageEntry:
        node.flags |= ImageEntry.NAMED
        node.depth = 0
        node.via = None
        if not is_link and node.path == path:  # (not a further name of a file read before)
            self.found[path] = node
        return node

    def expand(self, node: ImageEntry) -> None:
        """Resolve ``node``'s backing name to an entry (the edge), with the
        edge's findings.  Everything else the name makes qemu open (a
        ``json:`` name's own backing file, data file, children, folders,
        sockets) is held to the roots, and images among it are read too."""
        node.flags |= ImageEntry.EXPANDED
        name = node.backing_name
        if name is None or node.flags & ImageEntry.FAILED:
            return
        if node.depth + 1 >= self.max_depth:
            node.flags |= ImageEntry.TRUNCATED  # the chain goes on past the depth limit
            return
        recorded = node.backing_format
        if protocol_of(name) is None:  # the usual case: a plain path
            full = combine(node.path, name)
            known = self.found.get(full)
            if known is not None and known.decodes_as(recorded):  # (the usual case of the usual case)
                self.edge(node, known, name, recorded, full)
                return
        else:
            chain = (*node.chain(), name)
            model = self.model(node, name, recorded, chain, "backing file")
            if model is None:
                return
            layer: Target | None = None
            for target in model.targets:
                if target.role == "device-probe":
                    # (qemu opens the literal name from its working folder only to see whether it is a
                    # host block device: not an image file, and out of reach offline)
                    continue
                if target.role == "image" and target.kind == "file" and layer is None:
                    layer = target
                else:
                    self.hold(node, target, name, "backing file", (*chain, target.path), cwd=True, open_images=True)
            if layer is None or model.network:
                if model.network:
                    what = "; ".join(model.network)
                    message = f"backing file {name!r} is a network source ({what}), which cannot be verified offline"
                    self.add(finding("backing-network", node.path, chain, message, target=name))
                if layer is None:
                    if recorded is None and model.top_driver is None:
                        self.add(unrecorded_finding(node.path, node.format or "", name, None, False, chain))
                    return
            assert layer is not None
            if not layer.path.startswith("/"):
                self.hold(node, layer, name, "backing file", (*chain, layer.path), cwd=True, open_images=False)
                return
            full, recorded = layer.path, layer.format
        info = self.stat(full, node)
        if info is None:
            return
        source = "recorded" if recorded is not None else "probed"
        self.edge(node, self.node(full, info, recorded, source, node), name, recorded, full)

    def edge(self, node: ImageEntry, target: ImageEntry, name: str, recorded: str | None, full: str) -> None:
        """``node``'s backing file (named ``name``, resolved to ``full``) is ``target``."""
        if recorded is None:
            nested = target.backing_name is not None
            chain = (*node.chain(), full)
            self.add(unrecorded_finding(node.path, node.format or "", name, target.probed_format, nested, chain))
        node.next = target
        target.add_dependent(node)

    def chains(self, named: list[ImageEntry]) -> None:
        """Follow each named image's chain along the edges: loops and depth.
        Each entry's chain length is worked out once (in its ``depth``)."""
        loop = -1
        measured = ImageEntry.MEASURED
        reported: set[frozenset[int]] = set()
        for top in named:
            path: list[ImageEntry] = []
            seen: dict[int, int] = {}
            node: ImageEntry | None = top
            while node is not None and not node.flags & measured and id(node) not in seen:
                seen[id(node)] = len(path)
                path.append(node)
                node = node.next
            if node is None:
                tail = 0
            elif node.flags & measured:
                tail = node.depth
            else:  # back to an entry of this very walk: a loop
                start = seen[id(node)]
                cycle = frozenset(id(n) for n in path[start:])
                if cycle not in reported:
                    reported.add(cycle)
                    closing = path[-1]
                    again = closing.backing or node.path
                    message = f"backing file {again!r} is {node.path!r} again (same device and inode): the chain loops"
                    chain = (*(n.path for n in path), again)
                    self.add(finding("backing-loop", closing.path, chain, message, target=again), cycle)
                for n in path[start:]:
                    n.depth, n.flags = loop, n.flags | measured | ImageEntry.ON_LOOP
                path = path[:start]
                tail = loop
            for n in reversed(path):
                if tail != loop:
                    tail = self.max_depth + 1 if n.flags & ImageEntry.TRUNCATED else tail + 1
                n.depth, n.flags = tail, n.flags | measured
        for top in named:
            if top.depth == loop and not top.flags & ImageEntry.ON_LOOP and top.next is not None:
                # Not on the loop itself, but its chain runs into one.
                into: ImageEntry | None = top.next
                while into is not None and not into.flags & ImageEntry.ON_LOOP:
                    into = into.next
                where = into.path if into is not None else "?"
                message = f"the chain runs into a loop at {where!r}: it cannot be opened"
                self.add(finding("backing-loop", top.path, top.chain(), message, target=where), top.path)
            elif top.depth > self.max_depth and not top.dependents:
                # (reported on the top of the chain only: every layer below it is too deep as well)
                message = f"the chain has more than {self.max_depth} layers (--max-depth)"
                self.add(finding("backing-too-deep", top.path, (top.path,), message), top.path)

    def report(self) -> AuditReport:
        """Each file once: its first reading stands for all of them, taking
        their overlays and findings; sorted by path, with its worst finding."""
        images: list[ImageEntry] = []
        standin: dict[int, ImageEntry] = {}  # id() of a further reading -> the entry kept for its file
        moved: dict[str, str] = {}  # a further reading's path -> the kept entry's path
        for readings in self.nodes.values():
            kept = readings[0] if isinstance(readings, list) else readings
            images.append(kept)
            if isinstance(readings, list):
                for other in readings[1:]:
                    standin[id(other)] = kept
                    kept.flags |= other.flags & ImageEntry.NAMED
                    if other.path != kept.path:
                        moved[other.path] = kept.path
        if standin:
            for readings in self.nodes.values():
                group = readings if isinstance(readings, list) else [readings]
                merged: dict[int, ImageEntry] = {}
                for reading in group:
                    for overlay in reading._dependents or ():
                        overlay = standin.get(id(overlay), overlay)
                        overlay.flags |= ImageEntry.OVERLAY
                        merged[id(overlay)] = overlay
                group[0]._dependents = list(merged.values()) or None
            for key, f in self.findings.items():
                if f.image in moved:
                    self.findings[key] = Finding(f.code, f.severity, moved[f.image], f.chain, f.message, f.details)
        self.nodes.clear()
        self.found.clear()
        images.sort(key=lambda e: e.path)
        findings = sorted(self.findings.values(), key=lambda f: (-f.severity, f.image, f.code, f.message))
        worst: dict[str, Severity] = {}
        for f in findings:
            worst[f.image] = max(worst.get(f.image, f.severity), f.severity)
        for entry in images:
            entry.next = entry.via = None  # the walk is over: let go of the graph
            if worst:
                entry.worst = worst.get(entry.path)
        return AuditReport(images, findings)


def _typed(path: str) -> str:
    """``path`` made absolute as typed: the working folder before a relative
    name, nothing resolved (so that its components can be looked at)."""
    return os.path.abspath(path)


def default_roots(paths: Iterable[str]) -> tuple[str, ...]:
    """The roots when none are given: each named folder, and the folder of
    each named file."""
    out = []
    for path in paths:
        out.append(path if os.path.isdir(path) else os.path.dirname(path) or ".")
    return tuple(out)


def audit(
    paths: Iterable[str | os.PathLike[str]],
    fmt: str | None = None,
    *,
    roots: Iterable[str | os.PathLike[str]] = (),
    max_depth: int = MAX_DEPTH,
    standalone: bool = False,
    formats: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    on_image: Callable[[int, int], None] | None = None,
    jobs: int = 1,
) -> AuditReport:
    """Audit every image under ``paths``.  ``fmt`` declares the format of
    the named images, as a VM definition would.

    Nothing outside ``roots`` is opened, stat-ed or has its links read; an
    image that names something there is reported.  Without ``roots``, the
    roots are the named folders and the folders of the named files: the
    audit fails closed.  ``standalone``: each image must stand alone (the
    upload policy), so any file it names is an error and none is followed.
    ``formats``: the formats allowed (None: all).  ``exclude``: glob
    patterns of files and folders to leave out of the walk of each named
    folder (see :func:`discover`); a file left out is still read when a chain
    names it.  ``on_image(done, total)``
    is called as the named images are read (for a progress display).
    ``jobs``: processes reading the named files (see
    :func:`imgchain.parallel.ordered_map`; 1: this one only).
    """
    named_paths = [os.fspath(p) for p in paths]
    given = tuple(os.fspath(r) for r in roots)
    chosen = given or default_roots(named_paths)
    run = _Audit(
        fmt,
        tuple(os.path.realpath(r) for r in chosen),
        max_depth,
        typed_roots=tuple(_typed(r) for r in chosen),
        default_roots=not given,
        standalone=standalone,
        allowed=None if formats is None else frozenset(formats),
    )
    unreadable: list[tuple[str, str]] = []
    inside = []
    for path in named_paths:  # a named path outside the roots is reported, not looked into
        try:
            run.check_roots(path)
        except ChainError as exc:
            run.add(error_finding(exc, path, None, (path,)), path, path)
        else:
            inside.append(path)
    found: list[str] = []
    linked: set[int] = set()  # (the indexes in found of symlinks: few)
    for path, is_link in discover(inside, unreadable, exclude):
        if is_link:
            linked.add(len(found))
        found.append(path)
    total = len(found)
    named: list[ImageEntry] = []
    # (a file behind a symlink is read by read_named, after its root check: never by a helper)
    work = named_facts(fmt, run.allowed, standalone)
    read = ordered_map(work, [None if i in linked else path for i, path in enumerate(found)] if linked else found, jobs)
    try:
        for done, (path, facts) in enumerate(zip(found, read, strict=True), 1):
            is_link = done - 1 in linked
            try:
                node = run.read_named(path, is_link, facts)
            except Exception as exc:  # one image must not stop the audit of a store
                run.failed(path, exc)
                node = None
            if node is not None:
                named.append(node)
            if on_image is not None:
                on_image(done, total)
    finally:
        read.close()
    del found
    for folder, reason in unreadable:
        run.add(finding("image-unreadable", folder, (folder,), f"cannot be read: {reason}"))
    queue = deque(named)
    while queue:
        node = queue.popleft()
        if node.flags & ImageEntry.EXPANDED:
            continue
        try:
            run.expand(node)
        except Exception as exc:  # one image must not stop the audit of a store
            run.failed(node.path, exc)
        if node.next is not None and not node.next.flags & ImageEntry.EXPANDED:
            queue.append(node.next)
        queue.extend(run.pending)
        run.pending.clear()
    run.chains(named)
    for ident, f in run.orphans.items():
        if ident not in run.extent_idents:
            run.add(f, ident)
    return run.report()
