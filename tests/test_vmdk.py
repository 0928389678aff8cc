"""vmdk decoding: qemu's probe, sparse headers and footers, descriptors
and their extent lines, compared with qemu-img 7.2 where it is installed."""

from __future__ import annotations

import contextlib
import json
import shutil
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import craft
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgchain.errors import FormatError, TruncatedError, UnsupportedFeatureError
from imgchain.formats import NeedBytes, Reference, Window, vmdk

QEMU = shutil.which("qemu-img")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-img is not installed")

FLAT_DESC = (
    b'# Disk DescriptorFile\nversion=1\nCID=0000abcd\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\n'
    b'# Extent description\nRW 2048 FLAT "flat.raw" 0\n\n# The Disk Data Base\n#DDB\n\n'
    b'ddb.virtualHWVersion = "4"\nddb.adapterType = "lsilogic"\n'
)


def desc(*lines: str, create_type: str = "monolithicFlat", cid: bool = True) -> bytes:
    head = ["version=1"] + (["CID=1234abcd", "parentCID=ffffffff"] if cid else []) + [f'createType="{create_type}"']
    return ("\n".join(head + list(lines)) + "\n").encode()


# -- qemu-img, the oracle -----------------------------------------------------------


def qemu_img(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert QEMU is not None
    return subprocess.run([QEMU, *args], cwd=cwd, capture_output=True, text=True, check=False)


def qemu_info(path: Path) -> dict[str, Any] | str:
    """qemu-img info's JSON, or its error message."""
    r = qemu_img("info", "--output=json", path.name, cwd=path.parent)
    return json.loads(r.stdout) if r.returncode == 0 else r.stderr.strip()


def decode_with_extents(path: Path) -> vmdk.VmdkImage:
    """Decode an image, then its sparse extents in other files, as a walker will."""
    image = vmdk.decode(path.read_bytes())
    headers = []
    for e in image.extents:
        if e.filename is None or e.flat:
            headers.append(None)
        else:
            headers.append(vmdk.decode_extent_header((path.parent / e.filename).read_bytes(), e.type or "SPARSE"))
    return image.with_extent_headers(headers)


def assert_matches_qemu(path: Path, image: vmdk.VmdkImage, info: dict[str, Any]) -> None:
    """Our decoded fields equal what qemu-img info reports."""
    assert info["format"] == "vmdk"
    assert image.virtual_size == info["virtual-size"]
    assert image.cluster_size == info.get("cluster-size")
    assert image.info_supported == ("dirty-flag" in info)
    assert image.backing_filename == info.get("backing-filename")
    assert image.backing_format == info.get("backing-filename-format")
    data = info["format-specific"]["data"]
    assert (image.cid, image.parent_cid, image.create_type) == (data["cid"], data["parent-cid"], data["create-type"])
    ours = [
        {
            "filename": path.name if e.filename is None else e.filename,
            "format": e.type or "",
            "virtual-size": e.virtual_size,
            **({} if e.cluster_size is None else {"cluster-size": e.cluster_size}),
            **({"compressed": True} if e.compressed else {}),
        }
        for e in image.extents
    ]
    assert ours == [dict(x) for x in data["extents"]]


SUBFORMATS = [
    ("monolithicSparse", "1M", ""),
    ("monolithicSparse", "3M", ",adapter_type=lsilogic"),
    ("monolithicFlat", "1M", ",adapter_type=buslogic"),
    ("twoGbMaxExtentSparse", "2049M", ""),
    ("twoGbMaxExtentFlat", "2049M", ",adapter_type=legacyESX"),
    ("streamOptimized", "1M", ",adapter_type=ide"),
]


@needs_qemu
@pytest.mark.parametrize(("subformat", "size", "extra"), SUBFORMATS, ids=[f"{s[0]}-{s[1]}" for s in SUBFORMATS])
def test_qemu_made_images_decode_as_qemu_img_reports(tmp_path, subformat, size, extra):
    path = tmp_path / f"disk {subformat}.vmdk"  # a name with a space
    r = qemu_img("create", "-q", "-f", "vmdk", "-o", f"subformat={subformat}{extra}", path.name, size, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    info = qemu_info(path)
    assert isinstance(info, dict), info
    assert vmdk.probe(path.read_bytes()[:512]) == 100
    image = decode_with_extents(path)
    assert_matches_qemu(path, image, info)
    if subformat.startswith("twoGb"):
        assert len(image.extents) == 2
        assert [r.kind for r in image.references] == ["extent", "extent"]
    if "adapter_type" in extra:
        text = image.descriptor or image.embedded
        assert text is not None
        assert text.ddb_value("adapterType") == extra.split("=")[1]


@needs_qemu
def test_convert_to_stream_optimized_and_the_footer(tmp_path):
    (tmp_path / "src.raw").write_bytes(b"\x5a" * 70000)
    r = qemu_img("convert", "-O", "vmdk", "-o", "subformat=streamOptimized", "src.raw", "so.vmdk", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    so = tmp_path / "so.vmdk"
    image = vmdk.decode(so.read_bytes())
    assert image.extents[0].compressed and image.create_type == "streamOptimized"
    assert_matches_qemu(so, image, qemu_info(so))  # type: ignore[arg-type]
    # The same image with its header moved to a footer (gd_offset -1).
    data = so.read_bytes()
    moved = bytearray(data)
    struct.pack_into("<Q", moved, 56, vmdk.GD_AT_END)
    footer = struct.pack("<QII", 0, 0, 3) + bytes(496) + data[:512] + struct.pack("<QII", 0, 0, 0) + bytes(496)
    (tmp_path / "footer.vmdk").write_bytes(bytes(moved) + footer)
    image = vmdk.decode(bytes(moved) + footer)
    assert image.sparse is not None and image.sparse.from_footer
    assert_matches_qemu(tmp_path / "footer.vmdk", image, qemu_info(tmp_path / "footer.vmdk"))  # type: ignore[arg-type]
    # The footer is read through the window: a first read of 4 KiB asks for it.
    win = Window((bytes(moved) + footer)[:4096], size=len(moved) + len(footer))
    with pytest.raises(NeedBytes) as need:
        vmdk.decode(win)
    assert need.value.offset == len(moved) + len(footer) - 1536


@needs_qemu
def test_three_layer_chain_through_parent_file_name_hint(tmp_path):
    assert qemu_img("create", "-q", "-f", "vmdk", "base.vmdk", "1M", cwd=tmp_path).returncode == 0
    sub = tmp_path / "sub dir"
    sub.mkdir()
    r = qemu_img("create", "-q", "-f", "vmdk", "-b", "../base.vmdk", "-F", "vmdk", "sub dir/mid.vmdk", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = qemu_img("create", "-q", "-f", "vmdk", "-b", "mid.vmdk", "-F", "vmdk", "top.vmdk", cwd=sub)
    assert r.returncode == 0, r.stderr
    base, mid, top = (vmdk.decode(p.read_bytes()) for p in (tmp_path / "base.vmdk", sub / "mid.vmdk", sub / "top.vmdk"))
    assert top.references == (Reference("backing", "mid.vmdk", "image", "vmdk"),)
    assert mid.references == (Reference("backing", "../base.vmdk", "image", "vmdk"),)
    assert base.references == ()
    assert top.parent_cid == mid.cid and mid.parent_cid == base.cid  # what qemu checks when it reads data
    for path, image in ((sub / "top.vmdk", top), (sub / "mid.vmdk", mid)):
        assert_matches_qemu(path, image, qemu_info(path))  # type: ignore[arg-type]


@needs_qemu
def test_vmdk3_cowd_as_qemu_img(tmp_path):
    text = b'version=1\nCID=12345678\nparentCID=ffffffff\ncreateType="vmfsSparse"\n'
    data = bytearray(8192)
    data[:44] = b"COWD" + struct.pack("<10I", 1, 3, 2048, 16, 4, 2, 0, 0, 0, 0)
    data[512 : 512 + len(text)] = text
    (tmp_path / "cowd.vmdk").write_bytes(data)
    image = vmdk.decode(bytes(data))
    assert image.sparse is not None and image.sparse.kind == "vmdk3"
    assert image.create_type == ""
    assert_matches_qemu(tmp_path / "cowd.vmdk", image, qemu_info(tmp_path / "cowd.vmdk"))  # type: ignore[arg-type]


@needs_qemu
def test_mixed_extents_have_no_cluster_size(tmp_path):
    assert qemu_img("create", "-q", "-f", "vmdk", "s.vmdk", "1M", cwd=tmp_path).returncode == 0
    (tmp_path / "flat.raw").write_bytes(bytes(1 << 20))
    (tmp_path / "mixed.vmdk").write_bytes(
        desc('RW 2048 SPARSE "s.vmdk"', 'RW 2048 FLAT "flat.raw" 0', create_type="vmfs")
    )
    image = decode_with_extents(tmp_path / "mixed.vmdk")
    assert image.cluster_size is None and not image.info_supported
    assert_matches_qemu(tmp_path / "mixed.vmdk", image, qemu_info(tmp_path / "mixed.vmdk"))  # type: ignore[arg-type]


# -- refusals, made by editing qemu-made images -----------------------------------------


def monolithic_sparse(tmp_path: Path) -> bytes:
    if QEMU is not None:
        assert qemu_img("create", "-q", "-f", "vmdk", "m.vmdk", "1M", cwd=tmp_path).returncode == 0
        return (tmp_path / "m.vmdk").read_bytes()
    pytest.skip("qemu-img is not installed")


HEADER_EDITS = [
    ("version 4", 4, "<I", 4, UnsupportedFeatureError, "version"),
    ("num_gtes_per_gt 513", 44, "<I", 513, FormatError, "num_gtes_per_gt"),
    ("granularity 0", 20, "<Q", 0, FormatError, "granularity"),
    ("granularity too big", 20, "<Q", 0x400000, FormatError, "granularity"),
    ("grain_offset past the end", 64, "<Q", 0x81, TruncatedError, "grain_offset"),
    ("grain directory unreadable", 56, "<Q", 1 << 54, FormatError, "gd_offset"),
    ("capacity 0: a descriptor of a sparse type", 12, "<Q", 0, UnsupportedFeatureError, "createType"),
]


@needs_qemu
@pytest.mark.parametrize(
    ("offset", "fmt", "value", "exc", "field"), [e[1:] for e in HEADER_EDITS], ids=[e[0] for e in HEADER_EDITS]
)
def test_header_refusals_match_qemu(tmp_path, offset, fmt, value, exc, field):
    data = bytearray(monolithic_sparse(tmp_path))
    struct.pack_into(fmt, data, offset, value)
    (tmp_path / "bad.vmdk").write_bytes(data)
    assert isinstance(qemu_info(tmp_path / "bad.vmdk"), str), "qemu-img opened it"
    with pytest.raises(exc) as e:
        vmdk.decode(bytes(data))
    assert e.value.field == field
    assert str(e.value).startswith("vmdk: ")


@needs_qemu
@pytest.mark.parametrize(
    ("name", "edit"),
    [
        ("version 3 (read-only is fine)", (4, "<I", 3)),
        ("version 0", (4, "<I", 0)),
        ("gd_offset wraps to 0", (56, "<Q", 1 << 60)),
    ],
)
def test_header_edits_qemu_accepts(tmp_path, name, edit):
    data = bytearray(monolithic_sparse(tmp_path))
    struct.pack_into(edit[1], data, edit[0], edit[2])
    (tmp_path / "ok.vmdk").write_bytes(data)
    assert_matches_qemu(tmp_path / "ok.vmdk", vmdk.decode(bytes(data)), qemu_info(tmp_path / "ok.vmdk"))  # type: ignore[arg-type]


DESCRIPTOR_CASES = [
    ("no createType", desc('RW 2048 FLAT "flat.raw" 0').replace(b"createType", b"kind"), FormatError, None),
    ("unknown createType", desc('RW 2048 FLAT "flat.raw" 0', create_type="fancy"), UnsupportedFeatureError, None),
    (
        "monolithicSparse text",
        desc('RW 2048 FLAT "flat.raw" 0', create_type="monolithicSparse"),
        UnsupportedFeatureError,
        None,
    ),
    ("FLAT without offset", desc('RW 2048 FLAT "flat.raw"'), FormatError, "line 5"),
    ("FLAT negative offset", desc('RW 2048 FLAT "flat.raw" -1'), FormatError, "line 5"),
    ("VMFS with offset", desc('RW 2048 VMFS "flat.raw" 0'), FormatError, "line 5"),
    ("ZERO with offset", desc('RW 2048 ZERO "flat.raw" 0'), FormatError, "line 5"),
    ("SPARSE, then a line of digits", desc('RW 2048 SPARSE "flat.raw"', "7"), FormatError, "line 5"),
    ("no CID", desc('RW 2048 FLAT "flat.raw" 0', cid=False), FormatError, "CID"),
    ("only RDONLY extents", desc('RDONLY 2048 FLAT "flat.raw" 0'), FormatError, "no extent"),
    (
        "unterminated parent hint",
        desc('RW 2048 FLAT "flat.raw" 0', 'parentFileNameHint="x'),
        FormatError,
        "parentFileNameHint",
    ),
]


@pytest.mark.parametrize(
    ("text", "exc", "says"), [c[1:] for c in DESCRIPTOR_CASES], ids=[c[0] for c in DESCRIPTOR_CASES]
)
def test_descriptor_refusals(tmp_path, text, exc, says):
    with pytest.raises(exc) as e:
        vmdk.decode(text)
    if says:
        assert says in str(e.value)
    if QEMU is not None:  # the differential half: qemu-img refuses it too (or, for no extents, aborts)
        (tmp_path / "flat.raw").write_bytes(bytes(1 << 20))
        (tmp_path / "d.vmdk").write_bytes(text)
        assert isinstance(qemu_info(tmp_path / "d.vmdk"), str)


def test_invalid_extent_line_names_line_and_offset():
    text = desc('RW 2048 FLAT "a.raw" 0', 'RW 2048 FLAT "b.raw"')
    with pytest.raises(FormatError) as e:
        vmdk.decode(text)
    assert "line 6: invalid extent line 'RW 2048 FLAT \"b.raw\"'" in str(e.value)
    assert e.value.offset == text.index(b'RW 2048 FLAT "b')
    # qemu opened the first extent before it met the second line.
    assert vmdk.files_opened(text) == (Reference("extent", "a.raw", "image", "raw"),)


# -- extent lines: qemu's sscanf --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b'RW 2048 FLAT "f.raw" 0', (5, b"RW", 2048, b"FLAT", b"f.raw", 0)),
        (b'RW 2048 SPARSE "s.vmdk"', (4, b"RW", 2048, b"SPARSE", b"s.vmdk", None)),
        (b'RW\n2048\nFLAT "f" 9', (5, b"RW", 2048, b"FLAT", b"f", 9)),  # sscanf reads across lines
        (b"RW 2048 ZERO", (3, b"RW", 2048, b"ZERO", b"", None)),
        (b"# Extent description", (1, b"#", 0, b"", b"", None)),
        (b"", (-1, b"", 0, b"", b"", None)),
        (b'RWRWRWRWRWRW 1 FLAT "f" 0', (1, b"RWRWRWRWRW", 0, b"", b"", None)),  # %10s stops at 10
        (b'RW 99999999999999999999999 FLAT "f" 0', (5, b"RW", 2**63 - 1, b"FLAT", b"f", 0)),  # %ld clamps
        (b'RW 1 FLAT "' + b"x" * 600 + b'"', (4, b"RW", 1, b"FLAT", b"x" * 511, None)),  # %511[...] stops
        (b'RW 1 FLAT ""', (3, b"RW", 1, b"FLAT", b"", None)),
    ],
)
def test_scan_extent_line_is_qemus_sscanf(text, expected):
    assert tuple(vmdk.scan_extent_line(text, 0)) == expected


def test_extent_lines_qemu_skips_are_kept_but_not_opened():
    d = vmdk.parse_descriptor(
        desc('RDONLY 2048 FLAT "ro.raw" 0', 'NOACCESS 2048 FLAT "no.raw" 0', 'RW 2048 VMFSRDM "rdm"', 'RW 0 FLAT "z" 0')
    )
    assert [(e.access, e.type, e.filename, e.used) for e in d.extents] == [
        ("RDONLY", "FLAT", "ro.raw", False),
        ("NOACCESS", "FLAT", "no.raw", False),
        ("RW", "VMFSRDM", "rdm", False),
        ("RW", "FLAT", "z", False),
    ]


def test_descriptor_fields():
    image = vmdk.decode(FLAT_DESC)
    assert (image.cid, image.parent_cid, image.create_type) == (0xABCD, 0xFFFFFFFF, "monolithicFlat")
    assert image.descriptor is not None and image.descriptor.version == 1
    assert image.descriptor.ddb_value("adapterType") == "lsilogic"
    assert image.descriptor.ddb_value("virtualHWVersion") == "4"
    assert image.extents == (vmdk.Extent("flat.raw", "FLAT", 2048, 0, None, False, None),)
    assert image.virtual_size == 1 << 20 and image.cluster_size is None
    assert (image.format, image.dirty, image.corrupt, image.encrypted, image.data_file) == (
        "vmdk",
        False,
        False,
        False,
        None,
    )


def test_cid_is_found_by_substring_as_qemu_does():
    # No CID= line: qemu's strstr finds "CID" inside "parentCID".
    text = b'version=1\nparentCID=0000beef\ncreateType="vmfs"\nRW 1 FLAT "f" 0\n'
    assert vmdk.decode(text).cid == 0xBEEF


def test_sparse_file_descriptor_names_another_extent(tmp_path):
    """qemu ignores the extent line of a sparse file's own descriptor; the
    record keeps it (other readers follow it) but does not reference it."""
    data = bytearray(monolithic_sparse(tmp_path))
    at = data.index(b'SPARSE "m.vmdk"')
    data[at : at + 15] = b'SPARSE "/e/pwd"'
    image = vmdk.decode(bytes(data))
    assert image.references == ()
    assert image.embedded is not None
    assert [e.filename for e in image.embedded.extents] == ["/e/pwd"]


# -- the probe ---------------------------------------------------------------------------

PROBES = [
    (b"KDMV" + bytes(60), 100),
    (b"COWD" + bytes(60), 100),
    (b"KDM", 0),
    (FLAT_DESC, 100),
    (b'version=1\ncreateType="monolithicFlat"\nRW 2048 FLAT "/etc/shadow" 0\n', 100),
    (b"# one\n# two\nversion=2\n", 100),
    (b"#c\r\n  \r\nversion=3\r\n", 100),
    (b"   \n#c\nversion=1\n", 100),
    (b"#c\n\nversion=1\n", 0),  # an empty line (no space) ends it
    (b"\r\nversion=1\n", 0),
    (b'# Disk DescriptorFile\ncreateType="vmfs"\n', 0),  # a comment but no version= line: raw
    (b"version=4\n", 0),
    (b"version=1", 0),  # no line end
    (b" version=1\n", 0),
    (b"#" + b"x" * 600 + b"\nversion=1\n", 0),  # past the 512 bytes qemu probes
]


@pytest.mark.parametrize(("head", "score"), PROBES)
def test_probe_is_qemus(tmp_path, head, score):
    assert vmdk.probe(head[:512]) == score
    assert vmdk.sniff(head[:512]) == (score > 0)
    if QEMU is not None and len(head) > 4:
        (tmp_path / "p").write_bytes(head)
        info = qemu_info(tmp_path / "p")
        probed = "vmdk" if isinstance(info, str) else info["format"]  # qemu refuses broken vmdk; raw always opens
        assert probed == ("vmdk" if score else "raw")


# -- hostile descriptors ---------------------------------------------------------------------


HOSTILE = [
    ("extent on a host file", desc('RW 2048 FLAT "/etc/shadow" 0'), ["/etc/shadow"]),
    ("extent on a device", desc('RW 2048 FLAT "/dev/sda" 0', create_type="vmfs"), ["/dev/sda"]),
    ("dot-dot", desc('RW 2048 FLAT "../../../etc/passwd" 0'), ["../../../etc/passwd"]),
    (
        "comments, CRLF, blank lines",
        b'# a\r\n# b\r\n   \r\nversion=1\r\nCID=1\r\nparentCID=ffffffff\r\ncreateType="vmfs"\r\n\r\n'
        b'RW 8 FLAT "/dev/mem" 0\r\nRW 8 VMFS "x/../../y"\r\n',
        # sscanf reads on from the blank line to the next one: qemu opens /dev/mem twice.
        ["/dev/mem", "/dev/mem", "x/../../y"],
    ),
    ("parent hint to a host file", desc('RW 8 FLAT "a" 0', 'parentFileNameHint="/etc/passwd"'), ["/etc/passwd", "a"]),
    ("parent hint in a comment", desc('RW 8 FLAT "a" 0', '# parentFileNameHint="/root/x"'), ["/root/x", "a"]),
    ("many extents", desc(*[f'RW 1 FLAT "/dev/sd{c}" 0' for c in "abcdefgh"]), [f"/dev/sd{c}" for c in "abcdefgh"]),
]


@pytest.mark.parametrize(("text", "names"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_descriptors_decode_with_every_name_referenced(text, names):
    assert vmdk.probe(text[:512]) == 100
    image = vmdk.decode(text)
    assert [r.name for r in image.references] == names
    assert all(r.relative_to == "image" for r in image.references)
    assert vmdk.files_opened(text) == image.references


def test_hostile_descriptor_without_cid_is_refused_but_its_extents_were_opened():
    """The issue's example has no CID: qemu opens /etc/shadow, then refuses
    the image (qemu-img says "Invalid argument")."""
    text = b'version=1\ncreateType="monolithicFlat"\nRW 2048 FLAT "/etc/shadow" 0'
    with pytest.raises(FormatError, match="no CID"):
        vmdk.decode(text)
    assert vmdk.files_opened(text) == (Reference("extent", "/etc/shadow", "image", "raw"),)


def test_endless_descriptor_is_read_up_to_qemus_cap():
    comment = b"# padding padding padding\n"
    text = desc('RW 1 FLAT "/dev/zero" 0') + comment * ((3 << 20) // len(comment))
    win = craft.RecordingWindow(text)
    image = vmdk.decode(win)
    assert image.descriptor is not None and image.descriptor.length == vmdk.DESC_READ_CAP
    assert win.furthest <= vmdk.DESC_READ_CAP
    # Extent lines cut by the cap: the last one is malformed, as qemu reads it.
    line = b'RW 1 FLAT "/dev/zero" 0\n'
    text = desc() + line * ((3 << 20) // len(line))
    win = craft.RecordingWindow(text)
    with pytest.raises(FormatError, match="invalid extent line 'RW 1 FLAT \"/dev/z'"):
        vmdk.decode(win)
    assert win.furthest <= vmdk.DESC_READ_CAP
    opened = vmdk.files_opened(text)
    assert len(opened) == (vmdk.DESC_READ_CAP - len(desc())) // len(line)


def test_blank_line_before_an_extent_line_counts_it_twice_as_in_qemu():
    image = vmdk.decode(desc("", 'RW 2048 FLAT "f.raw" 0'))
    assert [(e.line, e.filename) for e in image.descriptor.extents] == [(5, "f.raw"), (6, "f.raw")]  # type: ignore[union-attr]
    assert image.virtual_size == 2 << 20  # qemu-img info says 2097152 too


def test_extent_lines_are_capped():
    with pytest.raises(FormatError, match="more than 65536 extent lines"):
        vmdk.decode(desc() + b"\n" * 70000 + b'RW 1 FLAT "f" 0\n')


@pytest.mark.parametrize("filler", [b"\n", b" ", b"\r\n", b"RW\n", b"RW 1\n"])
def test_a_megabyte_of_blank_or_broken_lines_is_fast(filler):
    text = desc('RW 1 FLAT "a" 0') + filler * (vmdk.DESC_READ_CAP // len(filler))
    start = time.perf_counter()
    assert [r.name for r in vmdk.decode(text).references] == ["a"]
    assert time.perf_counter() - start < 10


# -- truncation, windows, arbitrary input --------------------------------------------------


def test_truncated_sparse_image_is_refused_at_every_length(tmp_path):
    """qemu refuses a sparse file shorter than grain_offset sectors (the
    file's size counted in sectors rounded up): every cut of a qemu-made
    image below that is refused, and the rest decode as qemu opens them."""
    data = monolithic_sparse(tmp_path)
    grain_offset = vmdk.decode(data).sparse.header.grain_offset  # type: ignore[union-attr]
    limit = (grain_offset - 1) * 512
    for n in range(limit + 1):
        with pytest.raises(FormatError):
            vmdk.decode(data[:n])
    for n in range(limit + 1, len(data) + 1, 17):
        assert vmdk.decode(data[:n]).cid == vmdk.decode(data).cid


def test_truncated_descriptor_raises_only_our_errors():
    for n in range(len(FLAT_DESC)):
        with contextlib.suppress(FormatError):
            vmdk.decode(FLAT_DESC[:n])


def test_reads_through_a_window_ask_for_what_they_need(tmp_path):
    data = monolithic_sparse(tmp_path)
    win = Window(data[:512], size=len(data))
    with pytest.raises(NeedBytes) as need:
        vmdk.decode(win)
    win.add(need.value.offset, data[need.value.offset : need.value.offset + need.value.length])
    assert vmdk.decode(win) == vmdk.decode(data)


_TOKENS = st.sampled_from(
    [
        b"RW",
        b"RDONLY",
        b" ",
        b"\n",
        b"\r\n",
        b'"',
        b"FLAT",
        b"SPARSE",
        b"VMFS",
        b"ZERO",
        b"-1",
        b"0",
        b"2048",
        b"99999999999999999999",
        b"CID=",
        b"parentCID=",
        b"createType=",
        b'"vmfs"',
        b'"monolithicFlat"',
        b"parentFileNameHint=",
        b"/dev/sda",
        b"..",
        b"#",
        b"version=1",
        b"\0",
        b"ddb.x = ",
        b"\t",
        b"0x",
    ]
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(st.one_of(_TOKENS, st.binary(max_size=12)), max_size=80))
def test_descriptor_parser_raises_only_our_errors(parts):
    text = b"".join(parts)
    with contextlib.suppress(FormatError):
        vmdk.parse_descriptor(text)
    vmdk.parse_descriptor(text, strict=False)
    win = craft.RecordingWindow(text)
    with contextlib.suppress(FormatError):
        vmdk.decode(win)
    assert win.furthest <= max(vmdk.DESC_READ_CAP, len(text))
    vmdk.files_opened(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(head=st.sampled_from([b"KDMV", b"COWD", b""]), body=st.binary(max_size=3000))
def test_arbitrary_sparse_bytes_raise_only_our_errors(head, body):
    data = head + body
    for decoder in (vmdk.decode, vmdk.decode_extent_header, lambda d: vmdk.decode_extent_header(d, "SESPARSE")):
        with contextlib.suppress(FormatError):
            decoder(data)


def test_sparse_extent_header_of_a_split_image(tmp_path):
    if QEMU is None:
        pytest.skip("qemu-img is not installed")
    r = qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", "t.vmdk", "1M", cwd=tmp_path)
    assert r.returncode == 0
    ext = vmdk.decode_extent_header((tmp_path / "t-s001.vmdk").read_bytes())
    assert (ext.kind, ext.sectors, ext.cluster_size, ext.compressed, ext.from_footer) == (
        "vmdk4",
        2048,
        65536,
        False,
        False,
    )
    # qemu cannot open the extent file alone: it holds no descriptor.
    with pytest.raises(FormatError, match="no CID"):
        vmdk.decode((tmp_path / "t-s001.vmdk").read_bytes())


def test_nested_descriptor_in_an_extent_is_refused():
    data = bytearray(1024)
    data[:79] = struct.pack("<4sIIQQQQIQQQ", b"KDMV", 1, 0, 0, 128, 1, 1, 512, 0, 0, 0) + bytes(7)
    data[512 : 512 + len(FLAT_DESC)] = FLAT_DESC[:512]
    with pytest.raises(UnsupportedFeatureError, match="nested"):
        vmdk.decode_extent_header(bytes(data))
    # At the top, capacity 0 makes the embedded text the descriptor, extents and all.
    assert [r.name for r in vmdk.decode(bytes(data)).references] == ["flat.raw"]
