"""formats.polyglot: another format's signature inside an image's header range.

Real inputs: ISO 9660 and UDF images from ``genisoimage`` and ``mkudffs``, a
GPT disk from ``sfdisk``, converted by ``qemu-img convert`` to qcow2 (default
clusters, 512, 4096, compat 0.10) and QED; none of them may give a signature.
Hostile files are those images with a qemu-made header written over their
start (as ``dd conv=notrunc`` would), and ``qemu-img info`` is asked what it
makes of each: it opens them as qcow2 or QED, except the qcow2+VDI file,
which qemu 7.2 probes as VDI.  Tests that need a tool skip without it
(Debian packages: qemu-utils, genisoimage, udftools, fdisk).
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import craft
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgchain import formats
from imgchain.formats import NeedBytes, Window
from imgchain.formats.polyglot import FIRST_READ, SCAN_END, Signature, foreign_signatures, header_end_of

F = TypeVar("F", bound=Callable[..., Any])

TOOLS = {name: shutil.which(name) for name in ("qemu-img", "genisoimage", "mkudffs", "sfdisk")}


def needs(*tools: str) -> Callable[[F], F]:
    """Skip unless every tool is on PATH (and mark qemu-img users ``qemu``)."""
    missing = [t for t in tools if TOOLS[t] is None]
    skip = pytest.mark.skipif(bool(missing), reason=f"not installed: {', '.join(missing)}")

    def mark(test: F) -> F:
        test = skip(test)
        return pytest.mark.qemu(test) if "qemu-img" in tools else test

    return mark


def run(*args: str | Path, cwd: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, input=stdin, capture_output=True, text=True, check=False, timeout=60
    )


def must(*args: str | Path, cwd: Path | None = None, stdin: str | None = None) -> None:
    done = run(*args, cwd=cwd, stdin=stdin)
    assert done.returncode == 0, f"{args}: {done.stderr}"


def qemu_info(path: Path, fmt: str | None = None) -> tuple[str | None, str]:
    """The format ``qemu-img info`` opens ``path`` as (None if it refuses), and its stderr."""
    done = run("qemu-img", "info", "--output=json", *(["-f", fmt] if fmt else []), path)
    return (json.loads(done.stdout)["format"] if done.returncode == 0 else None), done.stderr


class Scan(NamedTuple):
    format: str
    signatures: tuple[Signature, ...]
    reads: tuple[tuple[int, int], ...]  # (offset, length) of each read beyond the first


def scan(data: bytes) -> Scan:
    """Probe and decode ``data`` as imgchain.probe does (a first read of
    FIRST_READ bytes), then look for foreign signatures, reading what
    ``foreign_signatures`` asks for and nothing more."""
    name = formats.probe_name(data[:512])
    image = formats.by_name(name).decode(data)
    end = header_end_of(image)
    win = Window(data[:FIRST_READ], len(data))
    reads = []
    while True:
        try:
            found = foreign_signatures(win, name, end)
            break
        except NeedBytes as need:
            reads.append((need.offset, need.length))
            win.add(need.offset, data[need.offset : need.offset + need.length])
            assert len(reads) < 3, reads
    assert found == foreign_signatures(Window(data), name, end)
    return Scan(name, found, tuple(reads))


def formats_found(data: bytes) -> set[str]:
    return {s.format for s in scan(data).signatures}


# -- real images -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Raw disks that other readers know, each made by its own tool."""
    work = tmp_path_factory.mktemp("polyglot")
    (work / "tree").mkdir()
    (work / "tree" / "hello.txt").write_text("hello\n")
    out: dict[str, Path] = {}
    if TOOLS["genisoimage"]:
        must("genisoimage", "-quiet", "-R", "-J", "-o", work / "iso9660.iso", work / "tree")
        must("genisoimage", "-quiet", "-R", "-udf", "-o", work / "udf-bridge.iso", work / "tree")
        # A 12 KiB system area (boot code): converted with 4 KiB clusters, the
        # primary volume descriptor lands at file offset 0x8000.
        (work / "boot.bin").write_bytes(bytes(range(1, 256)) * 48 + b"\1" * 48)
        must("genisoimage", "-quiet", "-R", "-G", work / "boot.bin", "-o", work / "system-area.iso", work / "tree")
        out.update({p.stem: p for p in work.glob("*.iso")})
    if TOOLS["mkudffs"]:
        for block in (2048, 4096):
            path = work / f"udf-{block}.udf"
            with open(path, "wb") as f:
                f.truncate(2 << 20)
            must("mkudffs", "--media-type=hd", f"--blocksize={block}", path)
            out[path.stem] = path
    if TOOLS["sfdisk"]:
        path = work / "gpt.raw"
        with open(path, "wb") as f:
            f.truncate(8 << 20)
        must("sfdisk", "-q", path, stdin="label: gpt\n,4M,L\n,,L\n")
        out["gpt"] = path
    return out


CONVERSIONS = {
    "qcow2": ["-O", "qcow2"],
    "qcow2-512": ["-O", "qcow2", "-o", "cluster_size=512"],
    "qcow2-4096": ["-O", "qcow2", "-o", "cluster_size=4096"],
    "qcow2-v2": ["-O", "qcow2", "-o", "compat=0.10"],
    "qed": ["-O", "qed"],
}
SOURCES = ("iso9660", "udf-bridge", "udf-2048", "udf-4096", "gpt", "system-area")
SOURCE_TOOL = {"udf-2048": "mkudffs", "udf-4096": "mkudffs", "gpt": "sfdisk"}


def _disk(disks: dict[str, Path], name: str) -> Path:
    if name not in disks:
        pytest.skip(f"not installed: {SOURCE_TOOL.get(name, 'genisoimage')}")
    return disks[name]


@pytest.mark.parametrize("source", SOURCES)
def test_raw_disks_of_other_readers_are_plain_raw(disks: dict[str, Path], source: str) -> None:
    data = _disk(disks, source).read_bytes()
    result = scan(data)
    assert (result.format, result.signatures, result.reads) == ("raw", (), ())


def test_the_raw_disks_do_carry_the_signatures(disks: dict[str, Path]) -> None:
    """The sources hold what the hostile tests look for (else those prove nothing)."""
    expect = {
        "iso9660": (0x8001, b"CD001"),
        "udf-bridge": (0x9001, b"BEA01"),
        "udf-2048": (0x8001, b"BEA01"),
        "udf-4096": (0x9001, b"NSR03"),
        "gpt": (512, b"EFI PART"),
    }
    for name, (offset, magic) in expect.items():
        if name in disks:
            assert disks[name].read_bytes()[offset : offset + len(magic)] == magic, name


@needs("qemu-img")
@pytest.mark.parametrize("target", CONVERSIONS)
@pytest.mark.parametrize("source", SOURCES)
def test_qemu_img_convert_makes_no_polyglot(disks: dict[str, Path], tmp_path: Path, source: str, target: str) -> None:
    out = tmp_path / f"{source}.{target}"
    must("qemu-img", "convert", *CONVERSIONS[target], _disk(disks, source), out)
    result = scan(out.read_bytes())
    assert result.format == CONVERSIONS[target][1]
    assert result.signatures == ()


@needs("qemu-img", "genisoimage")
def test_a_descriptor_that_guest_data_puts_at_0x8000_is_not_ours_to_report(
    disks: dict[str, Path], tmp_path: Path
) -> None:
    """format_inspector refuses this honest conversion ("Multiple formats
    detected: qcow2,iso"): the ISO's primary volume descriptor lands at file
    offset 0x8000, in a data cluster.  Outside the 4 KiB header cluster is
    guest data, and we do not look there."""
    out = tmp_path / "system-area.qcow2"
    must("qemu-img", "convert", "-O", "qcow2", "-o", "cluster_size=4096", disks["system-area"], out)
    data = out.read_bytes()
    assert data[0x8001:0x8006] == b"CD001"  # where format_inspector looks
    assert scan(data) == Scan("qcow2", (), ())


@needs("qemu-img")
@pytest.mark.parametrize(
    "options",
    [["-f", "qcow2"], ["-f", "qcow2", "-o", "compat=0.10"], ["-f", "qed"], ["-f", "qcow2", "-o", "cluster_size=2M"]],
    ids=["qcow2-v3", "qcow2-v2", "qed", "qcow2-2M"],
)
def test_blank_and_overlay_images_give_nothing(tmp_path: Path, options: list[str]) -> None:
    """Blank images, and overlays with a 988-byte backing name (in qemu's
    header range it covers offsets 510, 512 and 1024): qemu-made header
    ranges hold no foreign signature."""
    must("qemu-img", "create", "-q", *options, tmp_path / "base", "1G")
    folders = ("b" * 200, "c" * 200, "d" * 200, "e" * 200)
    long_name = "/".join((*folders, "EFI_PART_" * 20 + "base"))
    (tmp_path.joinpath(*folders)).mkdir(parents=True)
    (tmp_path / "base").rename(tmp_path / long_name)
    fmt = options[1]
    must("qemu-img", "create", "-q", *options, "-b", long_name, "-F", fmt, tmp_path / "overlay", cwd=tmp_path)
    for path in (tmp_path / long_name, tmp_path / "overlay"):
        result = scan(path.read_bytes())
        assert result.format == fmt
        assert result.signatures == ()
    overlay = (tmp_path / "overlay").read_bytes()
    at = overlay.find(long_name.encode())
    assert at < 1024 < at + len(long_name)


# -- hostile files ---------------------------------------------------------------------------------------


def overwrite(target: bytes, header: bytes, start: int = 0) -> bytes:
    """``dd if=header of=target bs=1 seek=start conv=notrunc``."""
    return target[:start] + header + target[start + len(header) :]


@pytest.fixture(scope="module")
def blank(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Headers qemu-img makes: default (64 KiB) clusters, so that the header
    range covers the ISO's descriptors at 0x8000.."""
    if TOOLS["qemu-img"] is None:
        pytest.skip("not installed: qemu-img")
    work = tmp_path_factory.mktemp("blank")
    out = {}
    for fmt in ("qcow2", "qed"):
        must("qemu-img", "create", "-q", "-f", fmt, work / fmt, "1G")
        out[fmt] = (work / fmt).read_bytes()
    return out


@needs("qemu-img")
@pytest.mark.parametrize(
    ("fmt", "source", "expect"),
    [
        ("qcow2", "iso9660", {"iso9660"}),
        ("qcow2", "udf-bridge", {"iso9660", "udf"}),
        ("qcow2", "udf-2048", {"udf"}),  # format_inspector misses it: BEA01, not CD001 or NSR0x, at 0x8001
        ("qcow2", "udf-4096", {"udf"}),
        ("qed", "iso9660", {"iso9660"}),
        ("qed", "udf-bridge", {"iso9660", "udf"}),
    ],
)
def test_an_image_header_written_over_an_iso(
    disks: dict[str, Path], blank: dict[str, bytes], tmp_path: Path, fmt: str, source: str, expect: set[str]
) -> None:
    """The first 4 KiB of a qemu-made header over an ISO or UDF image: its
    descriptors at 0x8000.. stay intact, and qemu-img opens the file as the
    image format (its tables at 64 KiB and beyond are the ISO's bytes)."""
    iso = _disk(disks, source).read_bytes()
    path = tmp_path / "polyglot"
    path.write_bytes(overwrite(iso, blank[fmt][:FIRST_READ]))
    assert qemu_info(path)[0] == fmt
    result = scan(path.read_bytes())
    assert result.format == fmt
    assert {s.format for s in result.signatures} == expect
    first = result.signatures[0]
    assert first.offset in (0x8001, 0x9001) and first.format in expect
    assert result.reads == ((FIRST_READ, 8), (0x8000, 0x8000))  # a GPT header's 8 bytes, then sectors 16..31


@needs("qemu-img", "sfdisk")
def test_qcow2_with_a_gpt_disk_s_first_sectors(disks: dict[str, Path], blank: dict[str, bytes], tmp_path: Path) -> None:
    """The protective MBR, GPT header and partition entries (bytes 446..17408)
    inside a qcow2's header cluster: qemu opens it as qcow2 (the bytes it
    overwrites are names in the feature name table)."""
    gpt = disks["gpt"].read_bytes()
    path = tmp_path / "gpt.qcow2"
    path.write_bytes(overwrite(blank["qcow2"], gpt[446:0x4400], 446))
    assert qemu_info(path)[0] == "qcow2"
    found = scan(path.read_bytes()).signatures
    assert [(s.format, s.offset) for s in found] == [("mbr", 510), ("gpt", 512)]
    assert "protective GPT" in found[0].what


@needs("qemu-img", "sfdisk")
def test_qcow2_with_a_gpt_header_for_4k_sectors(
    disks: dict[str, Path], blank: dict[str, bytes], tmp_path: Path
) -> None:
    """format_inspector misses this one: it only reads the MBR's 0x55AA."""
    gpt = disks["gpt"].read_bytes()
    path = tmp_path / "gpt4k.qcow2"
    path.write_bytes(overwrite(blank["qcow2"], gpt[512:1024], 4096))
    assert qemu_info(path)[0] == "qcow2"
    assert [(s.format, s.offset) for s in scan(path.read_bytes()).signatures] == [("gpt", 4096)]


@needs("qemu-img")
def test_qcow2_whose_snapshots_offset_is_the_vdi_signature(blank: dict[str, bytes], tmp_path: Path) -> None:
    """snapshots_offset (bytes 64..71, big-endian) 0x7f10dabe00000000 with no
    snapshots is a valid qcow2 field and the VDI signature 0xbeda107f
    (little-endian, at 0x40).  qemu 7.2 probes the file as VDI, not qcow2
    (both probes score 100 and the VDI driver comes first), and refuses it
    as a VDI; told ``-f qcow2`` it opens it as qcow2."""
    data = bytearray(blank["qcow2"])
    struct.pack_into(">Q", data, 64, 0x7F10DABE00000000)
    path = tmp_path / "vdi.qcow2"
    path.write_bytes(data)
    fmt, err = qemu_info(path)
    assert fmt is None and "VDI" in err
    assert qemu_info(path, "qcow2")[0] == "qcow2"
    assert formats.probe_name(bytes(data)) == "vdi"  # our probe is qemu's: VDI (and refused)
    image = formats.qcow2.decode(bytes(data))  # read as qcow2, as -f qcow2 does: a polyglot
    found = foreign_signatures(Window(bytes(data)), "qcow2", header_end_of(image))
    assert [(s.format, s.offset) for s in found] == [("vdi", 0x40)]


@needs("qemu-img")
def test_qed_whose_backing_name_starts_with_the_vdi_signature(blank: dict[str, bytes], tmp_path: Path) -> None:
    """QED's header is 64 bytes, so 0x40 is where qemu puts the backing file
    name.  Here qemu 7.2 probes QED (its driver comes before VDI's)."""
    path = tmp_path / "vdi.qed"
    path.write_bytes(overwrite(blank["qed"], b"\x7f\x10\xda\xbe", 0x40))
    assert qemu_info(path)[0] == "qed"
    assert [(s.format, s.offset) for s in scan(path.read_bytes()).signatures] == [("vdi", 0x40)]


# -- crafted bytes (no tools) ----------------------------------------------------------------------------


def sector(ident: bytes, kind: int = 1, at: int = 1) -> bytes:
    body = bytearray(2048)
    body[0] = kind
    body[at : at + len(ident)] = ident
    body[at + len(ident)] = 1
    return bytes(body)


def qcow2_header(cluster_bits: int = 16) -> bytes:
    data = craft.qcow2(cluster_bits=cluster_bits)
    return data + bytes(max(0, (3 << cluster_bits) - len(data)))


def with_sectors(data: bytes, sectors: dict[int, bytes]) -> bytes:
    for number, body in sectors.items():
        data = overwrite(data, body, number * 2048)
    return data


def test_only_the_header_range_is_looked_at() -> None:
    body = with_sectors(qcow2_header(15), {16: sector(b"CD001")})  # 32 KiB clusters: 0x8000 is the next cluster
    assert scan(body).signatures == ()
    assert foreign_signatures(Window(body), "qcow2", 0x10000)[0] == Signature(
        "iso9660", 0x8001, "ISO 9660 primary volume descriptor (version 1)"
    )


def test_the_descriptor_sectors_are_16_to_99() -> None:
    body = with_sectors(bytes(0x40000), {17: sector(b"NSR03", 0), 99: sector(b"CD001", 255), 100: sector(b"CD001")})
    found = foreign_signatures(Window(body), "qed", 0x40000)
    assert [(s.format, s.offset) for s in found] == [("udf", 17 * 2048 + 1), ("iso9660", 99 * 2048 + 1)]
    assert "set terminator" in found[1].what


def test_high_sierra() -> None:
    body = with_sectors(bytes(0x10000), {16: sector(b"CDROM", 1, 9)})
    assert foreign_signatures(Window(body), "qcow2", 0x10000) == (
        Signature("iso9660", 0x8009, "High Sierra volume descriptor (CDROM)"),
    )


def test_raw_has_no_header_range() -> None:
    body = with_sectors(overwrite(bytes(0x10000), b"EFI PART", 512), {16: sector(b"CD001")})
    assert foreign_signatures(Window(body), "raw", 0x10000) == ()
    assert {s.format for s in foreign_signatures(Window(body), "qcow2", 0x10000)} == {"gpt", "iso9660"}


def test_the_image_s_own_format_is_not_foreign() -> None:
    body = overwrite(bytes(4096), b"\x7f\x10\xda\xbe", 0x40)
    assert foreign_signatures(Window(body), "vdi", 4096) == ()
    assert foreign_signatures(Window(body), "qcow2", 4096)[0].format == "vdi"


@pytest.mark.parametrize(
    ("cluster_bits", "reads"),
    [
        (9, ()),
        (12, ()),
        (13, ((4096, 8),)),  # only the GPT header for 4 KiB sectors lies beyond the first read
        (16, ((4096, 8), (0x8000, 0x8000))),  # that, and the sectors from 16 on
        (21, ((4096, 8), (0x8000, SCAN_END - 0x8000))),
    ],
)
def test_at_most_two_reads_inside_the_header_range(cluster_bits: int, reads: tuple[tuple[int, int], ...]) -> None:
    data = qcow2_header(cluster_bits)
    assert scan(data) == Scan("qcow2", (), reads)
    for offset, length in reads:
        assert offset + length <= 1 << cluster_bits


def test_header_end_of_each_format() -> None:
    assert header_end_of(formats.qcow2.decode(craft.qcow2(cluster_bits=12))) == 4096
    qed = formats.qed.decode(craft.qed(cluster_size=8192, header_size=2, l1_table_offset=16384) + bytes(16384))
    assert header_end_of(qed) == 16384
    assert header_end_of(formats.raw.decode(bytes(100))) == 0


# -- nothing but our errors ------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=0x9000),
    fmt=st.sampled_from(["qcow2", "qed", "raw", "vdi"]),
    header_end=st.integers(-1, 1 << 33),
    first=st.integers(0, 0x9000),
)
def test_arbitrary_bytes(data: bytes, fmt: str, header_end: int, first: int) -> None:
    """Random bytes, random header ranges, files truncated anywhere: a
    result, or NeedBytes for bytes the file holds (then the same result)."""
    whole = foreign_signatures(Window(data), fmt, header_end)
    assert all(s.offset < min(header_end, len(data)) for s in whole)
    win = Window(data[:first], len(data))
    try:
        partial = foreign_signatures(win, fmt, header_end)
    except NeedBytes as need:
        assert need.offset >= first and need.offset + need.length <= min(header_end, len(data))
        win.add(need.offset, data[need.offset : need.offset + need.length])
        partial = foreign_signatures(win, fmt, header_end)
    assert partial == whole


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_truncated_polyglots(data: st.DataObject) -> None:
    """Sectors planted at random, the file cut anywhere: what is found is what
    the bytes left still show."""
    sectors = data.draw(st.dictionaries(st.integers(16, 40), st.sampled_from([b"CD001", b"BEA01", b"NSR02"])))
    body = with_sectors(qcow2_header(17), {n: sector(ident) for n, ident in sectors.items()})
    cut = data.draw(st.integers(0, len(body)))
    found = foreign_signatures(Window(body[:cut]), "qcow2", 1 << 17)
    assert [s.offset for s in found] == [n * 2048 + 1 for n in sorted(sectors) if n * 2048 + 6 <= cut]


# -- the audit of a store of them, in one run -------------------------------------------------------------


@needs("qemu-img", "genisoimage", "mkudffs", "sfdisk")
def test_an_upload_store_audits_as_it_should(disks: dict[str, Path], blank: dict[str, bytes], tmp_path: Path) -> None:
    """Under --standalone: the raw disks of other readers, qemu-made blank
    images and qemu-img conversions stay clean; the polyglots are errors."""
    from imgchain.audit import audit

    store = tmp_path / "uploads"
    store.mkdir()
    clean = []
    for name in SOURCES:
        (store / f"{name}.raw").write_bytes(disks[name].read_bytes())
        clean.append(f"{name}.raw")
        for target in ("qcow2", "qcow2-4096", "qed"):
            must("qemu-img", "convert", *CONVERSIONS[target], disks[name], store / f"{name}.{target}")
            clean.append(f"{name}.{target}")
    for kind in ("qcow2", "qcow2-v2", "qed"):
        if kind in blank:
            (store / f"blank.{kind}").write_bytes(blank[kind])
            clean.append(f"blank.{kind}")
    iso = disks["iso9660"].read_bytes()
    (store / "poly.qcow2").write_bytes(overwrite(iso, blank["qcow2"][:0x8000]))
    (store / "poly.qed").write_bytes(overwrite(disks["udf-bridge"].read_bytes(), blank["qed"][:0x8000]))
    report = audit([str(store)], standalone=True)
    flagged = {Path(f.image).name: f.code for f in report.findings}
    assert flagged == {"poly.qcow2": "format-polyglot", "poly.qed": "format-polyglot"}, report.findings
    assert len(report.images) == len(clean) + 2
