"""The image matrix for the differential tests against ``qemu-img`` 7.2.

No tests live here: this module only describes images and builds them.

A :class:`Case` is a list of ``qemu-img`` argument lists (``create``,
``snapshot``, ``bitmap``) run in a work directory, then a list of byte
patches applied in Python (for what ``qemu-img`` will not write: dirty and
corrupt bits, a missing backing-format extension, a raw file of 1000
bytes, the malformed headers of the refusal tests).  :func:`build_case`
runs both and returns the top image's name relative to the work directory,
so that the tests, run there, see relative ``"filename"`` strings as a user
would.

Every image is tiny (1 MiB or less, 512-byte clusters wherever the case does
not need others) so the whole matrix builds in seconds.

Header layouts: ``docs/interop/qcow2.txt`` (big-endian) and
``docs/interop/qed_spec.txt`` (little-endian); the field names are the specs'.
"""

from __future__ import annotations

import os
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from craft import QCOW2_FIELDS, QED_FIELDS

__all__ = [
    "CASES",
    "EXT_BACKING_FORMAT",
    "EXT_BITMAPS",
    "EXT_CRYPTO",
    "EXT_DATA_FILE",
    "EXT_FEATURE_TABLE",
    "QCOW2_FIELDS",
    "QED_FIELDS",
    "Case",
    "DropExtension",
    "Poke",
    "Qcow2Field",
    "QedField",
    "ReplaceExtensions",
    "Truncate",
    "bitmap",
    "build_case",
    "create",
    "ext",
    "feature_entry",
    "run_qemu_img",
    "snapshot",
]

QEMU_IMG = "qemu-img"
#: Replaced by the work directory's absolute path in command arguments.
WORKDIR = "{workdir}"

# Header field tables (name -> offset, struct format) are shared with craft.py.

# qcow2 header extension magics (qcow2.txt "Header extensions").
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_CRYPTO = 0x0537BE77
EXT_BITMAPS = 0x23852875
EXT_DATA_FILE = 0x44415441

# qcow2 incompatible feature bits.
DIRTY = 1 << 0
CORRUPT = 1 << 1


# -- patches ------------------------------------------------------------------------


def _read(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(length).ljust(length, b"\0")


def _write(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def _set_field(path: Path, fields: dict[str, tuple[int, str]], name: str, value: int, op: str) -> None:
    offset, fmt = fields[name]
    (old,) = struct.unpack(fmt, _read(path, offset, struct.calcsize(fmt)))
    if op == "=":
        new = value
    elif op == "|":
        new = old | value
    elif op == "&~":
        new = old & ~value
    else:
        raise ValueError(f"unknown op {op!r}")
    _write(path, offset, struct.pack(fmt, new))


@dataclass(frozen=True)
class Qcow2Field:
    """Set a qcow2 header field: ``op`` is ``=`` (replace), ``|`` (set bits)
    or ``&~`` (clear bits)."""

    file: str
    field: str
    value: int
    op: str = "="

    def apply(self, workdir: Path) -> None:
        _set_field(workdir / self.file, QCOW2_FIELDS, self.field, self.value, self.op)


@dataclass(frozen=True)
class QedField:
    """Set a QED header field, as :class:`Qcow2Field` does for qcow2."""

    file: str
    field: str
    value: int
    op: str = "="

    def apply(self, workdir: Path) -> None:
        _set_field(workdir / self.file, QED_FIELDS, self.field, self.value, self.op)


@dataclass(frozen=True)
class Poke:
    """Write raw bytes at an offset."""

    file: str
    offset: int
    data: bytes

    def apply(self, workdir: Path) -> None:
        _write(workdir / self.file, self.offset, self.data)


@dataclass(frozen=True)
class Truncate:
    """Set a file's length (creating it if needed)."""

    file: str
    length: int

    def apply(self, workdir: Path) -> None:
        path = workdir / self.file
        path.touch()
        os.truncate(path, self.length)


def ext(magic: int, data: bytes) -> bytes:
    """One qcow2 header extension: magic, length, data padded to 8 bytes."""
    return struct.pack(">II", magic, len(data)) + data + b"\0" * (-len(data) % 8)


def feature_entry(kind: int, bit: int, name: bytes) -> bytes:
    """One feature-name-table entry (kind 0 incompatible, 1 compatible, 2 autoclear)."""
    return struct.pack(">BB46s", kind, bit, name)


def _extension_area(path: Path) -> tuple[int, int, int, list[tuple[int, bytes]]]:
    """(start, end, end of the list with its terminator, [(magic, data)]) of a
    well-formed qcow2 image's header extensions."""
    head = _read(path, 0, 112)
    version, backing_off, cluster_bits = (
        struct.unpack_from(">I", head, 4)[0],
        struct.unpack_from(">Q", head, 8)[0],
        struct.unpack_from(">I", head, 20)[0],
    )
    start = 72 if version == 2 else struct.unpack_from(">I", head, 100)[0]
    end = backing_off or (1 << cluster_bits)
    area = _read(path, 0, end)
    exts: list[tuple[int, bytes]] = []
    off = start
    while off < end:
        magic, length = struct.unpack_from(">II", area, off)
        if magic == 0:
            return start, end, off + 8, exts
        exts.append((magic, area[off + 8 : off + 8 + length]))
        off += 8 + length + (-length % 8)
    return start, end, end, exts


def _rewrite_extensions(path: Path, exts: list[tuple[int, bytes]]) -> None:
    start, end, list_end, _ = _extension_area(path)
    blob = b"".join(ext(m, d) for m, d in exts) + b"\0" * 8
    if start + len(blob) > end:
        raise ValueError(f"{path}: {len(blob)} bytes of extensions do not fit in {start}..{end}")
    _write(path, start, b"\0" * (list_end - start))
    _write(path, start, blob)


@dataclass(frozen=True)
class DropExtension:
    """Remove every qcow2 header extension with this magic (e.g. the
    backing-format one, which ``qemu-img create`` 7.2 always writes)."""

    file: str
    magic: int

    def apply(self, workdir: Path) -> None:
        path = workdir / self.file
        _, _, _, exts = _extension_area(path)
        _rewrite_extensions(path, [(m, d) for m, d in exts if m != self.magic])


@dataclass(frozen=True)
class ReplaceExtensions:
    """Replace a qcow2 image's header extensions with these (magic, data) pairs."""

    file: str
    exts: tuple[tuple[int, bytes], ...]

    def apply(self, workdir: Path) -> None:
        _rewrite_extensions(workdir / self.file, list(self.exts))


Patch = Qcow2Field | QedField | Poke | Truncate | DropExtension | ReplaceExtensions


# -- cases --------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One image (or chain) to build and compare."""

    id: str
    #: qemu-img argument lists, without the leading "qemu-img"; "{workdir}"
    #: is replaced by the work directory's absolute path.
    commands: tuple[tuple[str, ...], ...]
    #: The top image, relative to the work directory, as passed to info.
    top: str
    #: Applied in order after every command has run.
    patches: tuple[Patch, ...] = ()
    #: Folders to make before the commands run.
    dirs: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.id


def create(
    name: str,
    fmt: str = "qcow2",
    size: str | None = "1M",
    opts: str | None = "cluster_size=512",
    backing: str | None = None,
    backing_fmt: str | None = None,
    extra: tuple[str, ...] = (),
) -> tuple[str, ...]:
    """``qemu-img create`` arguments.  ``size=None`` takes the backing file's size."""
    args: list[str] = ["create", "-q", "-f", fmt, *extra]
    if opts:
        args += ["-o", opts]
    if backing is not None:
        args += ["-b", backing]
    if backing_fmt is not None:
        args += ["-F", backing_fmt]
    args.append(name)
    if size is not None:
        args.append(size)
    return tuple(args)


def snapshot(image: str, name: str) -> tuple[str, ...]:
    return ("snapshot", "-c", name, image)


def bitmap(image: str, name: str, *flags: str) -> tuple[str, ...]:
    return ("bitmap", "--add", *flags, image, name)


QED = "cluster_size=4096"  # the smallest QED cluster
V2 = "compat=0.10,cluster_size=512"


def _single(
    id_: str,
    *commands: tuple[str, ...],
    top: str,
    patches: tuple[Patch, ...] = (),
    dirs: tuple[str, ...] = (),
) -> Case:
    return Case(id_, commands, top, patches, dirs)


def _no_backing_format(*files: str) -> tuple[Patch, ...]:
    return tuple(DropExtension(f, EXT_BACKING_FORMAT) for f in files)


_RAW = [
    _single("raw-0", create("r.raw", "raw", "0", None), top="r.raw"),
    _single("raw-1000", patches=(Truncate("r.raw", 1000),), top="r.raw"),
    _single("raw-1M", create("r.raw", "raw", "1M", None), top="r.raw"),
]

_QCOW2 = [
    _single("qcow2-v2-c512", create("a.qcow2", opts=V2), top="a.qcow2"),
    _single("qcow2-v2-c64k", create("a.qcow2", opts="compat=0.10"), top="a.qcow2"),
    _single("qcow2-v3-c512", create("a.qcow2"), top="a.qcow2"),
    _single("qcow2-v3-c4096", create("a.qcow2", opts="cluster_size=4096"), top="a.qcow2"),
    _single("qcow2-v3-c64k", create("a.qcow2", opts="cluster_size=65536"), top="a.qcow2"),
    _single("qcow2-v3-c2M", create("a.qcow2", opts="cluster_size=2M"), top="a.qcow2"),
    _single("qcow2-size-0", create("a.qcow2", size="0"), top="a.qcow2"),
    # qemu-img rounds sizes up to 512; the header may still say 1000 (virtual-size 512).
    _single("qcow2-size-1000", create("a.qcow2"), patches=(Qcow2Field("a.qcow2", "size", 1000),), top="a.qcow2"),
    _single("qcow2-lazy-refcounts", create("a.qcow2", opts="cluster_size=512,lazy_refcounts=on"), top="a.qcow2"),
    *(
        _single(
            f"qcow2-refcount-bits-{bits}",
            create("a.qcow2", opts=f"cluster_size=512,refcount_bits={bits}"),
            top="a.qcow2",
        )
        for bits in (1, 2, 4, 8, 16, 32, 64)
    ),
    _single("qcow2-extended-l2-16k", create("a.qcow2", opts="cluster_size=16K,extended_l2=on"), top="a.qcow2"),
    _single(
        "qcow2-extended-l2-zstd-64k",
        create("a.qcow2", opts="cluster_size=64K,extended_l2=on,compression_type=zstd"),
        top="a.qcow2",
    ),
    _single("qcow2-zstd", create("a.qcow2", opts="cluster_size=512,compression_type=zstd"), top="a.qcow2"),
    _single("qcow2-data-file", create("a.qcow2", opts="cluster_size=512,data_file=a.data"), top="a.qcow2"),
    _single(
        "qcow2-data-file-raw",
        create("a.qcow2", opts="cluster_size=512,data_file=a.data,data_file_raw=on"),
        top="a.qcow2",
    ),
    _single(
        "qcow2-data-file-spaces",
        create("my disk.qcow2", opts="cluster_size=512,data_file=my dätä.raw,data_file_raw=on"),
        top="my disk.qcow2",
    ),
    _single(
        "qcow2-dirty",
        create("a.qcow2"),
        patches=(Qcow2Field("a.qcow2", "incompatible_features", DIRTY, "|"),),
        top="a.qcow2",
    ),
    _single(
        "qcow2-corrupt",
        create("a.qcow2"),
        patches=(Qcow2Field("a.qcow2", "incompatible_features", CORRUPT, "|"),),
        top="a.qcow2",
    ),
    _single(
        "qcow2-dirty-corrupt-extended-l2",
        create("a.qcow2", opts="cluster_size=16K,extended_l2=on"),
        patches=(Qcow2Field("a.qcow2", "incompatible_features", DIRTY | CORRUPT, "|"),),
        top="a.qcow2",
    ),
    # On v2 bytes 72.. are the extension area, not feature bits: still clean.
    _single(
        "qcow2-v2-byte72-dirty",
        create("a.qcow2", opts=V2),
        patches=(Qcow2Field("a.qcow2", "incompatible_features", DIRTY, "|"),),
        top="a.qcow2",
    ),
    _single("qcow2-snapshot", create("a.qcow2"), snapshot("a.qcow2", "s1"), top="a.qcow2"),
    _single(
        "qcow2-snapshots-unicode",
        create("a.qcow2"),
        snapshot("a.qcow2", "s1"),
        snapshot("a.qcow2", "snäp two 漢"),
        top="a.qcow2",
    ),
    _single("qcow2-v2-snapshot", create("a.qcow2", opts=V2), snapshot("a.qcow2", "old"), top="a.qcow2"),
    _single(
        "qcow2-bitmaps",
        create("a.qcow2"),
        bitmap("a.qcow2", "b0"),
        bitmap("a.qcow2", "b1", "--disable"),
        bitmap("a.qcow2", "b2", "-g", "1M"),
        top="a.qcow2",
    ),
    _single(
        "qcow2-bitmaps-snapshots-dirty",
        create("a.qcow2", opts="cluster_size=4096"),
        snapshot("a.qcow2", "s1"),
        bitmap("a.qcow2", "only", "-g", "64K"),
        patches=(Qcow2Field("a.qcow2", "incompatible_features", DIRTY, "|"),),
        top="a.qcow2",
    ),
    _single("qcow2-name-unicode", create("dísk 漢.qcow2"), top="dísk 漢.qcow2"),
    _single("qcow2-name-quote", create("it's.qcow2"), top="it's.qcow2"),
    # qemu-img 7.2 will not create AES images, but opens them: crypt_method 1.
    _single("qcow2-aes", create("a.qcow2"), patches=(Qcow2Field("a.qcow2", "crypt_method", 1),), top="a.qcow2"),
    _single(
        "qcow2-v2-aes", create("a.qcow2", opts=V2), patches=(Qcow2Field("a.qcow2", "crypt_method", 1),), top="a.qcow2"
    ),
    _single(
        "qcow2-luks",
        create(
            "a.qcow2",
            opts="cluster_size=512,encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
            extra=("--object", "secret,id=sec0,data=abc"),
        ),
        top="a.qcow2",
    ),
]

#: Unknown header extensions, empty and not: more than the decoder walks one
#: read at a time, so the rest of the area is walked in one piece.
_MANY_UNKNOWN = (
    *((0x7E570000 + i, b"") for i in range(200)),
    *((0x7E580000 + i, b"x" * i) for i in range(1, 24)),
)

_QCOW2_QEMU_LIMITS = [
    # qemu lists no snapshots of an image with an external data file
    # (qcow2_snapshot_list: ENOTSUP), though it reads the table at open.
    _single(
        "qcow2-data-file-snapshot-hidden",
        create("a.qcow2"),
        snapshot("a.qcow2", "s1"),
        patches=(
            ReplaceExtensions("a.qcow2", ((EXT_DATA_FILE, b"a.data"),)),
            Qcow2Field("a.qcow2", "incompatible_features", 1 << 2, "|"),
            Truncate("a.data", 1 << 20),
        ),
        top="a.qcow2",
    ),
    # A data file extension on version 2 (no feature bits): qemu shows none.
    _single(
        "qcow2-v2-data-file-extension",
        create("a.qcow2", opts=V2),
        patches=(ReplaceExtensions("a.qcow2", ((EXT_DATA_FILE, b"a.data"),)),),
        top="a.qcow2",
    ),
    # On version 3 without the data file bit: shown, not opened, no data-file-raw.
    _single(
        "qcow2-data-file-extension-without-bit",
        create("a.qcow2"),
        patches=(ReplaceExtensions("a.qcow2", ((EXT_DATA_FILE, b"a.data"),)),),
        top="a.qcow2",
    ),
    _single(
        "qcow2-many-unknown-extensions",
        create("a.qcow2", opts="cluster_size=4096,data_file=a.data"),
        patches=(ReplaceExtensions("a.qcow2", (*_MANY_UNKNOWN, (EXT_DATA_FILE, b"a.data"))),),
        top="a.qcow2",
    ),
]

_QED = [
    _single("qed-c4096", create("a.qed", "qed", opts=QED), top="a.qed"),
    # qemu takes the file's length in whole 512-byte sectors, rounded up,
    # before it checks that the L1 table lies inside the file.
    _single(
        "qed-length-not-whole-sectors",
        create("a.qed", "qed", opts=QED),
        patches=(Truncate("a.qed", 5 * 4096 - 100),),
        top="a.qed",
    ),
    # qed_max_image_size wraps to 0 in 64 bits for 4 MiB clusters and
    # 4-cluster tables: an image of size 0 still opens.
    _single(
        "qed-c4M-t4-size-0",
        create("a.qed", "qed", "0", QED),
        patches=(
            QedField("a.qed", "cluster_size", 4 << 20),
            QedField("a.qed", "table_size", 4),
            QedField("a.qed", "l1_table_offset", 4 << 20),
            Truncate("a.qed", 5 * (4 << 20)),
        ),
        top="a.qed",
    ),
    _single("qed-c64k", create("a.qed", "qed", opts=None), top="a.qed"),
    _single("qed-size-0", create("a.qed", "qed", "0", QED), top="a.qed"),
    _single(
        "qed-need-check",
        create("a.qed", "qed", opts=QED),
        patches=(QedField("a.qed", "features", 2, "|"),),
        top="a.qed",
    ),
]

_VMDK = [
    *(
        _single(f"vmdk-{sub}", create("d.vmdk", "vmdk", size, f"subformat={sub}"), top="d.vmdk")
        for sub, size in (
            ("monolithicSparse", "10M"),
            ("monolithicFlat", "10M"),
            ("streamOptimized", "10M"),
            # just over 2 GiB: two extents (sparse files: nothing is written)
            ("twoGbMaxExtentSparse", "2049M"),
            ("twoGbMaxExtentFlat", "2049M"),
        )
    ),
    *(
        _single(f"vmdk-adapter-{a}", create("d.vmdk", "vmdk", "10M", f"adapter_type={a}"), top="d.vmdk")
        for a in ("ide", "lsilogic", "buslogic", "legacyESX")
    ),
    _single(
        "vmdk-chain-3",
        create("base.vmdk", "vmdk", "10M", None),
        create("sub dir/mid.vmdk", "vmdk", None, None, backing="../base.vmdk", backing_fmt="vmdk"),
        create("sub dir/top.vmdk", "vmdk", None, None, backing="mid.vmdk", backing_fmt="vmdk"),
        dirs=("sub dir",),
        top="sub dir/top.vmdk",
    ),
    _single(
        "qcow2-over-vmdk",
        create("base.vmdk", "vmdk", "10M", "subformat=twoGbMaxExtentSparse"),
        create("top.qcow2", size=None, backing="base.vmdk", backing_fmt="vmdk"),
        top="top.qcow2",
    ),
    _single(
        "vmdk-over-vmdk-flat",
        create("base.vmdk", "vmdk", "10M", "subformat=monolithicFlat"),
        create("top.vmdk", "vmdk", None, None, backing="base.vmdk", backing_fmt="vmdk"),
        top="top.vmdk",
    ),
]

_QCOW = [
    _single("qcow-alone", create("a.qcow", "qcow", "10M", None), top="a.qcow"),
    _single(
        "qcow-over-raw",
        create("base.raw", "raw", "1M", None),
        create("top.qcow", "qcow", None, None, backing="base.raw", backing_fmt="raw"),
        top="top.qcow",
    ),
    _single(
        "qcow-chain",
        create("a b.qcow", "qcow", "1M", None),
        create("d/mid.qcow", "qcow", None, None, backing="../a b.qcow", backing_fmt="qcow"),
        create("top.qcow2", size=None, backing="d/mid.qcow", backing_fmt="qcow"),
        dirs=("d",),
        top="top.qcow2",
    ),
]

_OTHER = [
    _single("vpc-dynamic", create("d.vpc", "vpc", "10M", None), top="d.vpc"),
    _single("vpc-force-size", create("d.vpc", "vpc", "10M", "force_size=on"), top="d.vpc"),
    # a fixed VHD keeps its footer at the end: qemu probes it as raw
    _single("vpc-fixed-probes-raw", create("d.vpc", "vpc", "10M", "subformat=fixed"), top="d.vpc"),
    _single(
        "qcow2-over-fixed-vpc",
        create("b.vpc", "vpc", "10M", "subformat=fixed,force_size=on"),
        create("top.qcow2", size=None, backing="b.vpc", backing_fmt="vpc"),
        top="top.qcow2",
    ),
    _single("vhdx-default", create("d.vhdx", "vhdx", "10M", None), top="d.vhdx"),
    _single("vhdx-block-1M", create("d.vhdx", "vhdx", "10M", "block_size=1M"), top="d.vhdx"),
    _single("vhdx-block-64M-log-4M", create("d.vhdx", "vhdx", "100M", "block_size=64M,log_size=4M"), top="d.vhdx"),
    _single("vhdx-fixed", create("d.vhdx", "vhdx", "10M", "subformat=fixed"), top="d.vhdx"),
    _single("vdi-dynamic", create("d.vdi", "vdi", "10M", None), top="d.vdi"),
    _single("vdi-static", create("d.vdi", "vdi", "10M", "static=on"), top="d.vdi"),
    *(
        _single(f"parallels-{c}", create("d.parallels", "parallels", "10M", f"cluster_size={c}"), top="d.parallels")
        for c in ("4k", "64k", "1M")
    ),
    _single(
        "luks",
        create("d.luks", "luks", "1M", "key-secret=s0,iter-time=10", extra=("--object", "secret,id=s0,data=abc")),
        top="d.luks",
    ),
    _single(
        "qcow2-over-vhdx",
        create("base.vhdx", "vhdx", "10M", None),
        create("mid.qcow2", size=None, backing="base.vhdx", backing_fmt="vhdx"),
        top="mid.qcow2",
    ),
]

_CHAINS = [
    _single(
        "chain-qcow2-raw",
        create("base.raw", "raw", "1M", None),
        create("top.qcow2", backing="base.raw", backing_fmt="raw"),
        top="top.qcow2",
    ),
    _single(
        "chain-qcow2-raw-probed",
        create("base.raw", "raw", "1M", None),
        create("top.qcow2", backing="base.raw", backing_fmt="raw"),
        patches=_no_backing_format("top.qcow2"),
        top="top.qcow2",
    ),
    _single(
        "chain-v2-qcow2-raw1000",
        create("base.raw", "raw", "1M", None),
        create("top.qcow2", size="1000", opts=V2, backing="base.raw", backing_fmt="raw"),
        patches=(Truncate("base.raw", 1000),),
        top="top.qcow2",
    ),
    _single(
        "chain-qcow2-qcow2-raw",
        create("base.raw", "raw", "512K", None),
        create("mid.qcow2", backing="base.raw", backing_fmt="raw"),
        create("top.qcow2", opts="cluster_size=4096", backing="mid.qcow2", backing_fmt="qcow2"),
        top="top.qcow2",
    ),
    _single(
        "chain-depth5-mixed",
        create("base.raw", "raw", "1M", None),
        create("l1.qed", "qed", opts=QED, backing="base.raw", backing_fmt="raw"),
        create("l2.qcow2", backing="l1.qed", backing_fmt="qed"),
        create("l3.qcow2", opts=V2, backing="l2.qcow2", backing_fmt="qcow2"),
        create("top.qcow2", opts="cluster_size=512,lazy_refcounts=on", backing="l3.qcow2", backing_fmt="qcow2"),
        snapshot("l2.qcow2", "mid-snap"),
        top="top.qcow2",
    ),
    _single(
        "chain-depth5-mixed-probed",
        create("base.raw", "raw", "1M", None),
        create("l1.qed", "qed", opts=QED, backing="base.raw", backing_fmt="raw"),
        create("l2.qcow2", backing="l1.qed", backing_fmt="qed"),
        create("l3.qcow2", opts=V2, backing="l2.qcow2", backing_fmt="qcow2"),
        create("top.qcow2", backing="l3.qcow2", backing_fmt="qcow2"),
        patches=(
            QedField("l1.qed", "features", 4, "&~"),  # the no-probe bit
            *_no_backing_format("l2.qcow2", "l3.qcow2", "top.qcow2"),
        ),
        top="top.qcow2",
    ),
    _single(
        "chain-qed-qcow2-raw",
        create("base.raw", "raw", "1M", None),
        create("mid.qcow2", backing="base.raw", backing_fmt="raw"),
        # -F qcow2 leaves QED's no-probe bit clear: the layer below is probed.
        create("top.qed", "qed", opts=QED, backing="mid.qcow2", backing_fmt="qcow2"),
        top="top.qed",
    ),
    _single(
        "chain-qed-qed-raw",
        create("base.raw", "raw", "1M", None),
        create("mid.qed", "qed", opts=QED, backing="base.raw", backing_fmt="raw"),
        create("top.qed", "qed", opts=QED, backing="mid.qed", backing_fmt="qed"),
        top="top.qed",
    ),
    _single(
        "chain-sub-relative",
        create("base.raw", "raw", "1M", None),
        create("sub/a.qcow2", backing="../base.raw", backing_fmt="raw"),
        dirs=("sub",),
        top="sub/a.qcow2",
    ),
    _single(
        "chain-x-y-z-relative",
        create("base.raw", "raw", "1M", None),
        create("z/mid.qcow2", backing="../base.raw", backing_fmt="raw"),
        create("x/y/top", backing="../../z/mid.qcow2", backing_fmt="qcow2"),
        dirs=("z", "x/y"),
        top="x/y/top",
    ),
    _single(
        "chain-dot-slash-top",
        create("base.raw", "raw", "1M", None),
        create("sub/p4.qcow2", backing="../base.raw", backing_fmt="raw"),
        dirs=("sub",),
        top="./sub//p4.qcow2",
    ),
    _single(
        "chain-absolute",
        create("base.raw", "raw", "1M", None),
        create("mid.qcow2", backing=f"{WORKDIR}/base.raw", backing_fmt="raw"),
        create("top.qed", "qed", opts=QED, backing=f"{WORKDIR}/mid.qcow2", backing_fmt="qcow2"),
        top="top.qed",
    ),
    _single(
        "chain-absolute-probed",
        create("base.raw", "raw", "1M", None),
        create("sub/top.qcow2", backing=f"{WORKDIR}/base.raw", backing_fmt="raw"),
        patches=_no_backing_format("sub/top.qcow2"),
        dirs=("sub",),
        top="sub/top.qcow2",
    ),
    _single(
        "chain-unicode-spaces",
        create("dir é/base 漢.raw", "raw", "1M", None),
        create("dir é/mid é.qcow2", backing="base 漢.raw", backing_fmt="raw"),
        create("top 漢 é.qcow2", opts=V2, backing="dir é/mid é.qcow2", backing_fmt="qcow2"),
        dirs=("dir é",),
        top="top 漢 é.qcow2",
    ),
    _single(
        "chain-quote",
        create("it's base.raw", "raw", "1M", None),
        create("o'top.qcow2", backing="it's base.raw", backing_fmt="raw"),
        top="o'top.qcow2",
    ),
    _single(
        "chain-data-file-dirty-mid",
        create("base.raw", "raw", "1M", None),
        create("mid.qcow2", opts="cluster_size=512,data_file=mid.data", backing="base.raw", backing_fmt="raw"),
        create("top.qcow2", opts="cluster_size=2M", backing="mid.qcow2", backing_fmt="qcow2"),
        bitmap("mid.qcow2", "b0"),
        patches=(Qcow2Field("mid.qcow2", "incompatible_features", DIRTY, "|"),),
        top="top.qcow2",
    ),
]

#: Every case, in a stable order.
CASES: list[Case] = [*_RAW, *_QCOW2, *_QCOW2_QEMU_LIMITS, *_QED, *_VMDK, *_QCOW, *_OTHER, *_CHAINS]


# qemu's PBKDF2 benchmark (run for every LUKS create, whatever iter-time says)
# fails now and then on a fast CPU when its first round takes under 1 ms of
# thread CPU time (on a machine whose thread clock ticks every 4 ms, about one
# try in three).  That is qemu-img failing to make the image, not a finding;
# each try costs milliseconds, so try often enough never to see it.
_FLAKY_LUKS = b"Unable to get accurate CPU usage"
_FLAKY_RETRIES = 30


def run_qemu_img(args: tuple[str, ...] | list[str], cwd: Path | str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([QEMU_IMG, *args], cwd=cwd, capture_output=True, check=False)


def build_case(case: Case, workdir: Path | str) -> str:
    """Build ``case`` in ``workdir``; return the top image's name relative to it."""
    workdir = Path(workdir)
    for d in case.dirs:
        (workdir / d).mkdir(parents=True, exist_ok=True)
    for command in case.commands:
        args = [a.replace(WORKDIR, str(workdir.resolve())) for a in command]
        done = run_qemu_img(args, workdir)
        for _ in range(_FLAKY_RETRIES):
            if done.returncode == 0 or _FLAKY_LUKS not in done.stderr:
                break
            done = run_qemu_img(args, workdir)
        if done.returncode != 0:
            raise RuntimeError(
                f"case {case.id}: qemu-img {' '.join(args)} failed ({done.returncode}): "
                f"{done.stderr.decode(errors='replace').strip()}"
            )
    for patch in case.patches:
        patch.apply(workdir)
    return case.top
