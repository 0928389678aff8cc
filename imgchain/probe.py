"""The one module that opens image files.

Safety rules, each enforced here and nowhere else:

* A path is ``stat``-ed before it is opened; anything but a regular file or
  a block device (a FIFO, socket, character device, directory) is refused
  with :class:`NotRegularFileError` and never opened.  Opening a FIFO blocks,
  and opening some devices has side effects.
* The open itself uses ``O_NONBLOCK | O_NOCTTY``, and the opened file is
  checked to be the very file that was ``stat``-ed, so a file swapped for a
  FIFO between the two calls cannot hang us either.
* Reads are bounded: the first :data:`INITIAL_READ` bytes, then only the
  ranges a decoder asks for (:class:`~imgchain.formats.NeedBytes`), at most
  :data:`READ_CAP` bytes per image in all, whatever the image's size.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import stat
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from imgchain import formats
from imgchain.errors import (
    BackingLoopError,
    BackingMissingError,
    ChainError,
    FormatError,
    ImageAccessError,
    ImgChainError,
    NotRegularFileError,
    TruncatedError,
)
from imgchain.formats import NeedBytes, Window, make_record, polyglot, qcow2

if TYPE_CHECKING:
    from imgchain.formats import luks, vmdk

__all__ = [
    "INITIAL_READ",
    "MAX_SYMLINKS",
    "READ_AHEAD",
    "READ_CAP",
    "FileInfo",
    "FormatSource",
    "Image",
    "Roots",
    "read_extent_header",
    "read_image",
    "same_file",
    "stat_image",
]

#: The first read of every image: probing looks at its first 512 bytes; the
#: rest usually holds the whole header, its extensions and the backing name.
INITIAL_READ = 4096
#: When a decoder needs bytes beyond what was read, at least this much is read.
READ_AHEAD = 64 * 1024
#: The most the headers of any one image may cost in reads (a qcow2 header
#: cluster is at most 2 MiB).  Tables add what qemu lets them span: a qcow2
#: snapshot table up to QCOW_MAX_SNAPSHOTS_SIZE (64 MiB), a bitmap directory
#: up to QCOW2_MAX_BITMAP_DIRECTORY_SIZE (64 MiB less 64 KiB), each only as
#: far as its header says it may reach (see :meth:`_Reader.allow`).
READ_CAP = 16 * 1024 * 1024

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)

T = TypeVar("T")

#: Formats whose content is decoded a second time, as a prober would see it,
#: when an image is declared as something else (raw has nothing to show).
_DECODED_WHEN_DIFFERENT = frozenset(name for name in formats.names() if name != formats.raw.NAME)


def _pread(fd: int, length: int, offset: int) -> bytes:
    """One positioned read: one system call, no shared file offset.
    (Tests on a fake file system, which has no pread, replace it.)"""
    return os.pread(fd, length, offset)


class FormatSource(str, enum.Enum):
    """Where a layer's format came from."""

    GIVEN = "given"  #: the user named it (``-f``)
    RECORDED = "recorded"  #: the overlay recorded it (qcow2 backing format, QED no-probe bit)
    PROBED = "probed"  #: nobody did: it was probed from the content


class FileInfo(NamedTuple):
    """What ``stat`` says of an image file."""

    path: str
    kind: str  #: "file" or "block"
    size: int  #: bytes (for a block device, its length)
    allocated: int  #: bytes allocated on disk (``st_blocks * 512``)
    dev: int
    ino: int

    @property
    def identity(self) -> tuple[int, int]:
        return (self.dev, self.ino)


class Image(NamedTuple):
    """One image file, read and decoded."""

    path: str
    file: FileInfo
    format: str
    format_source: FormatSource
    #: The format the content probes as, whatever the format used was.
    probed_format: str
    decoded: formats.DecodedImage
    #: When the content probes as another of our formats than the one used:
    #: what it decodes as in that format (a prober's view), or why it does not.
    content: formats.DecodedImage | FormatError | None = None
    snapshots: tuple[qcow2.Snapshot, ...] = ()
    bitmaps: tuple[qcow2.Bitmap, ...] = ()
    #: The LUKS header a LUKS-encrypted qcow2 points at (checked as qemu does).
    luks: luks.LuksHeader | None = None
    bytes_read: int = 0
    #: Other formats' signatures inside the bytes this image's format keeps
    #: for its header (a polyglot: see ``imgchain.formats.polyglot``), when
    #: asked for (``scan``).
    polyglot: tuple[polyglot.Signature, ...] = ()
    #: The files of a vmdk's extents other than the image itself, in the
    #: descriptor's order (read with ``tables``, as qemu-img info reads them).
    extent_files: tuple[FileInfo, ...] = ()

    @property
    def allocated(self) -> int:
        """Bytes allocated on disk, extents included (qemu-img's actual-size)."""
        return self.file.allocated + sum(f.allocated for f in self.extent_files)


_KIND_NAMES = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISDIR, "a directory"),
)


def _describe(mode: int) -> str:
    for test, name in _KIND_NAMES:
        if test(mode):
            return name
    return "not a regular file"


def _os_error(path: str, exc: OSError) -> ChainError:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOENT:
        return BackingMissingError(path, reason)
    if exc.errno == errno.ELOOP:
        return ImageAccessError(path, "too many levels of symbolic links")
    return ImageAccessError(path, reason)


#: Symlinks followed in one path before resolution gives up (as the kernel does).
MAX_SYMLINKS = 40


def _within(path: str, root: str) -> bool:
    """Whether the absolute ``path`` is ``root`` or below it (``/`` holds everything)."""
    return path == root or path.startswith(root if root.endswith("/") else root + "/")


#: What resolving a folder gave: where it leads outside the roots (a str),
#: or (the resolved path, whether it exists, symlinks followed so far).
_Resolved = str | tuple[str, bool, int]


class Roots:
    """The folders an audit may look into, and the check of a path against them.

    ``roots`` are absolute real paths (``/`` holds everything).  Symlinks and
    ``..`` are resolved one component at a time (``lstat``, ``readlink``),
    and resolution stops at the first component that is neither inside a
    root nor above one: nothing outside the roots is ever looked at.  The
    one exception is ``named``: absolute (unresolved) paths that the user
    typed, whose own components may be looked at, so that a root or a path
    named through a symlink (``ln -s store s; --root s s``) is resolved
    exactly as its root is.  A name that does not exist resolves lexically
    from there on.  More than :data:`MAX_SYMLINKS` symlinks in one name is
    a loop: :class:`BackingLoopError`.

    A store has many images per folder: each folder is resolved once, and
    only the last component of each path is looked at after that.
    """

    __slots__ = ("_folders", "named", "roots")

    def __init__(self, roots: tuple[str, ...], named: tuple[str, ...] = ()) -> None:
        self.roots = roots
        self.named = named
        self._folders: dict[str, _Resolved] = {}

    def _may_look(self, candidate: str) -> bool:
        return any(_within(candidate, root) or _within(root, candidate) for root in self.roots) or any(
            _within(typed, candidate) for typed in self.named
        )

    def _walk(self, path: str, parts: list[str], resolved: str, exists: bool, links: int) -> _Resolved:
        """Resolve the components ``parts`` (a stack: the next one last) from ``resolved``."""
        while parts:
            part = parts.pop()
            if part in ("", "."):
                continue
            if part == "..":
                resolved = resolved.rsplit("/", 1)[0]
                continue
            candidate = f"{resolved}/{part}"
            if not self._may_look(candidate):
                return "/".join([candidate, *reversed(parts)])
            if exists:
                try:
                    st = os.lstat(candidate)
                except OSError:
                    exists = False  # the rest is lexical
                else:
                    if stat.S_ISLNK(st.st_mode):
                        links += 1
                        if links > MAX_SYMLINKS:
                            raise BackingLoopError(
                                path, f"more than {MAX_SYMLINKS} symbolic links at {candidate!r}: the name loops"
                            )
                        target = os.readlink(candidate)
                        if target.startswith("/"):
                            resolved = ""
                        parts.extend(target.split("/")[::-1])
                        continue
            resolved = candidate
        return resolved, exists, links

    def outside(self, path: str) -> str | None:
        """Where ``path`` leads if that is outside every root, else None."""
        if not path.startswith("/"):
            try:
                path = os.getcwd() + "/" + path
            except OSError:  # the working folder is gone: a relative name leads nowhere known
                return path
        folder, _, leaf = path.rpartition("/")
        state = self._folders.get(folder)
        if state is None:
            state = self._walk(path, folder.split("/")[::-1], "", True, 0)
            self._folders[folder] = state
        if isinstance(state, str):
            return f"{state}/{leaf}"
        state = self._walk(path, [leaf], *state)
        if isinstance(state, str):
            return state
        final = state[0] or "/"
        return None if any(_within(final, root) for root in self.roots) else final


def same_file(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` name one existing file or folder: the same
    string, or the same device and inode.  Names are not normalised:
    ``x/../y`` is not ``y`` when ``x`` is a symlink."""
    if a == b:
        return True
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def stat_image(path: str | os.PathLike[str]) -> FileInfo:
    """``stat`` a would-be image (following symlinks) without opening it.

    Raises BackingMissingError, ImageAccessError, or NotRegularFileError for
    anything but a regular file or a block device."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _os_error(path, exc) from None
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return make_record(FileInfo, (path, "file", st.st_size, st.st_blocks * 512, st.st_dev, st.st_ino))
    if stat.S_ISBLK(mode):
        return FileInfo(path, "block", st.st_size, st.st_blocks * 512, st.st_dev, st.st_ino)
    raise NotRegularFileError(path, f"{_describe(mode)}, not an image; not opened")


class _Reader:
    """Bounded reads from one open image: at most ``cap`` bytes in all,
    :data:`READ_CAP` for the headers plus what :meth:`allow` adds."""

    __slots__ = ("cap", "fd", "path", "total")

    def __init__(self, fd: int, path: str, total: int = 0) -> None:
        self.fd = fd
        self.path = path
        self.total = total  #: bytes read so far
        self.cap = READ_CAP

    def allow(self, length: int) -> None:
        """Let the reads go ``length`` bytes further: what a table the header
        points at may span, by the header and by qemu's own limit for it."""
        self.cap += length

    def pread(self, length: int, offset: int) -> bytes:
        if self.total + length > self.cap:
            raise ImageAccessError(
                self.path, f"reading {length} bytes at {offset} would pass the read cap of {self.cap} bytes here"
            )
        try:
            data = _pread(self.fd, length, offset)
        except OSError as exc:
            raise _os_error(self.path, exc) from None
        self.total += len(data)
        return data

    def fill(
        self,
        decode: Callable[[Window], T],
        win: Window,
        fmt: str,
        ahead: int = READ_AHEAD,
        need: NeedBytes | None = None,
    ) -> T:
        """Call ``decode`` until it stops asking for bytes (each read at least
        ``ahead`` bytes, where the file has them).  ``need``: what a call
        made already asked for (read first, rather than asked for again)."""
        while True:
            if need is not None:
                length = min(max(need.length, ahead), win.size - need.offset)
                data = self.pread(length, need.offset)
                if len(data) < need.length:  # the file shrank under us
                    raise TruncatedError(fmt, f"short read at {need.offset}", offset=need.offset) from None
                win.add(need.offset, data)
            try:
                return decode(win)
            except NeedBytes as more:
                need = more


def _open(path: str) -> int:
    try:
        return os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise _os_error(path, exc) from None


def _first_read(fd: int, path: str, info: FileInfo) -> tuple[int, bytes]:
    """The size of the file open as ``fd`` and its first bytes, once it is
    checked to be the very file :func:`stat_image` saw (``info``): a file
    swapped for a FIFO between the two cannot hang us."""
    st = os.fstat(fd)
    same_kind = stat.S_ISREG(st.st_mode) if info.kind == "file" else stat.S_ISBLK(st.st_mode)
    if st.st_ino != info.ino or st.st_dev != info.dev or not same_kind:
        raise ImageAccessError(path, "the file changed while it was being opened")
    size = st.st_size if info.kind == "file" else os.lseek(fd, 0, os.SEEK_END)
    first = _pread(fd, min(INITIAL_READ, size), 0)
    if size and not first:
        raise ImageAccessError(path, "cannot read the first bytes")
    return size, first


def read_image(
    path: str | os.PathLike[str],
    fmt: str | None = None,
    *,
    source: FormatSource | None = None,
    tables: bool = True,
    info: FileInfo | None = None,
    scan: bool = False,
) -> Image:
    """Open, probe and decode one image.

    ``fmt`` is the format to decode it as (None: probe it); ``source`` says
    where ``fmt`` came from (default GIVEN when ``fmt`` is set).  With
    ``tables``, a qcow2's snapshot table and bitmap directory are read too
    (``imgchain info`` shows them; the audit does not need them).  ``info``
    is the result of an earlier :func:`stat_image` of the same path.  With
    ``scan``, the header area is searched for other formats' signatures
    (``Image.polyglot``; the audit asks for it, ``info`` and ``xml`` do not
    show it).

    Raises FormatError (a malformed or refused header) or ChainError (the
    file is missing, unreadable, or not a regular file or block device).
    """
    path = os.fspath(path)
    if info is None:
        info = stat_image(path)
    try:
        module = formats.by_name(fmt) if fmt is not None else None
    except FormatError as exc:
        exc.path = path
        raise
    fd = _open(path)
    try:
        size, first = _first_read(fd, path, info)
        reader = _Reader(fd, path, len(first))
        probed = formats.probe_name(first, path) if size else formats.raw.NAME
        if module is None:
            module, source = formats.decoder_for(probed), FormatSource.PROBED
        elif source is None:
            source = FormatSource.GIVEN
        win = Window(first, size)
        try:
            try:
                decoded = module.decode(win)  # the usual case: the first read holds it all
            except NeedBytes as need:
                decoded = reader.fill(module.decode, win, module.NAME, need=need)
        except FormatError as exc:
            exc.probed_format = probed
            _opens(exc, module, reader, win)
            raise
        content: formats.DecodedImage | FormatError | None = None
        if probed != module.NAME and probed in _DECODED_WHEN_DIFFERENT:
            # What a host that probes would have taken this file for.
            prober = formats.by_name(probed)
            try:
                content = reader.fill(prober.decode, win, probed)
            except FormatError as exc:
                content = exc
                _opens(exc, prober, reader, win)
        # Other formats' signatures in the header area: one read at most, exactly the range the scan
        # names (never past the header area).
        signatures = polyglot.signatures(decoded, first, size, reader.pread) if scan else ()
        snapshots: tuple[qcow2.Snapshot, ...] = ()
        bitmaps: tuple[qcow2.Bitmap, ...] = ()
        luks_header = None
        is_qcow2 = module is qcow2  # (only a qcow2 has a LUKS header, a snapshot table, bitmaps)
        fde = decoded.full_disk_encryption if is_qcow2 else None
        if fde is not None:
            from imgchain.formats import luks  # only LUKS-encrypted images need it

            luks_header = reader.fill(lambda w: luks.decode(w, fde.offset), win, luks.NAME)
        if tables and is_qcow2:
            ext = decoded.bitmaps_extension
            reader.allow(qcow2.snapshot_table_span(decoded) + (ext.bitmap_directory_size if ext else 0))
            try:
                snapshots = reader.fill(lambda w: qcow2.decode_snapshot_table(w, decoded), win, module.NAME)
                bitmaps = reader.fill(lambda w: qcow2.decode_bitmap_directory(w, decoded), win, module.NAME)
            except FormatError as exc:
                exc.probed_format = probed
                raise
    except FormatError as exc:
        exc.path = path
        raise
    except OSError as exc:
        raise _os_error(path, exc) from None
    finally:
        os.close(fd)
    extent_files: tuple[FileInfo, ...] = ()
    if tables and module.NAME == "vmdk" and any(e.filename is not None for e in decoded.extents):
        decoded, extent_files = _read_extents(path, decoded)
    if info.kind == "block":
        info = FileInfo(info.path, info.kind, size, info.allocated, info.dev, info.ino)
    # (the fields in order, made as _make makes them: this is run for every image)
    return make_record(
        Image,
        (
            path,
            info,
            module.NAME,
            source,
            probed,
            decoded,
            content,
            snapshots,
            bitmaps,
            luks_header,
            reader.total,
            signatures,
            extent_files,
        ),
    )


def _opens(exc: FormatError, module: ModuleType, reader: _Reader, win: Window) -> None:
    """What a file that does not decode as ``module`` still names: the files
    qemu opens before it refuses it (a vmdk's extents), or that other
    hypervisors open (a VHDX's parent locators), in ``exc.opens``."""
    named = getattr(module, "files_opened", None) or getattr(module, "named_files", None)
    if named is not None:
        with contextlib.suppress(ImgChainError):
            exc.opens = reader.fill(named, win, module.NAME)


def _read_extents(path: str, image: vmdk.VmdkImage) -> tuple[vmdk.VmdkImage, tuple[FileInfo, ...]]:
    """A vmdk's extents in other files, as qemu opens them: each name joined
    to the descriptor's folder, stat-ed (never a FIFO, socket or device),
    and a sparse one's header read (bounded, as any image); the image
    completed from those headers.  An extent that cannot be opened makes the
    image fail to open, as in qemu."""
    from imgchain.names import combine, protocol_of

    headers: list[vmdk.SparseExtent | None] = []
    files = []
    for extent in image.extents:
        if extent.filename is None:
            headers.append(None)
            continue
        name = combine(path, extent.filename)
        if protocol_of(name) is not None:
            raise ImageAccessError(path, f"extent {extent.filename!r} is not a local file; it cannot be read offline")
        try:
            info = stat_image(name)
            files.append(info)
            headers.append(None if extent.flat else read_extent_header(name, info, extent.type or "SPARSE"))
        except ChainError as exc:
            exc.referrer = exc.referrer or path
            raise
    return image.with_extent_headers(headers), tuple(files)


def read_extent_header(path: str, info: FileInfo, kind: str = "SPARSE") -> vmdk.SparseExtent:
    """The header of a vmdk's sparse extent file (``info``: its :func:`stat_image`),
    read as qemu reads it (``kind``: the descriptor's extent type), bounded."""
    from imgchain.formats import vmdk

    fd = _open(path)
    try:
        size, first = _first_read(fd, path, info)
        reader = _Reader(fd, path, len(first))
        return reader.fill(lambda w: vmdk.decode_extent_header(w, kind), Window(first, size), "vmdk")
    except FormatError as exc:
        exc.path = path
        raise
    except OSError as exc:
        raise _os_error(path, exc) from None
    finally:
        os.close(fd)
