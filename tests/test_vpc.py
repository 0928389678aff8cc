"""vpc (VHD) decoding, against qemu-img 7.2 where it is installed."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qemu_info import create, info, needs_qemu, only_our_errors, probed

from imgchain.errors import FormatError, TruncatedError, UnsupportedFeatureError
from imgchain.formats import Reference, Window, vpc

CREATED = [
    ("dynamic", []),
    ("dynamic force_size", ["-o", "force_size=on"]),
    ("fixed", ["-o", "subformat=fixed"]),
    ("fixed force_size", ["-o", "subformat=fixed,force_size=on"]),
]


@needs_qemu
@pytest.mark.parametrize("size", ["10M", "3000K"])
@pytest.mark.parametrize("opts", [c[1] for c in CREATED], ids=[c[0] for c in CREATED])
def test_qemu_made_images(tmp_path, opts, size):
    data = create(tmp_path, "vpc", "d.vhd", size, *opts)
    image = vpc.decode(data)
    got = info(tmp_path / "d.vhd", "vpc")
    assert isinstance(got, dict), got
    assert image.virtual_size == got["virtual-size"]
    assert image.cluster_size == got.get("cluster-size")
    assert got["dirty-flag"] is image.info_dirty_flag is False
    assert "format-specific" not in got
    fixed = "subformat=fixed" in " ".join(opts)
    assert image.subformat == ("fixed" if fixed else "dynamic")
    # qemu probes a fixed VHD as raw: its footer is only at the end
    assert vpc.probe(data[:512]) == (0 if fixed else 100)
    assert probed(tmp_path, data) == ("raw" if fixed else "vpc")
    if "force_size" in " ".join(opts):
        assert image.footer.creator_application == b"qem2"
        assert image.virtual_size == {"10M": 10 << 20, "3000K": 3000 << 10}[size]


def _dynamic(tmp_path) -> bytes:
    return create(tmp_path, "vpc", "d.vhd", "10M")


def _fix(b: bytearray, at: int = 0) -> bytearray:
    b[at + 64 : at + 68] = b"\0\0\0\0"
    struct.pack_into(">I", b, at + 64, vpc.vpc_checksum(bytes(b[at : at + 512])))
    return b


def _with_footer(data: bytes, **fields: object) -> bytes:
    b = bytearray(data)
    offsets = {"creator_application": (28, "4s"), "current_size": (48, ">Q"), "disk_type": (60, ">I")}
    for name, value in fields.items():
        if name == "geometry":
            struct.pack_into(">HBB", b, 56, *value)  # type: ignore[misc]
        else:
            at, fmt = offsets[name]
            struct.pack_into(fmt, b, at, value)
    return bytes(_fix(b))


SIZE_RULES = [
    ("qemu: CHS", {"current_size": 10 << 20}, 10514432),
    ("win : current_size", {"creator_application": b"win ", "current_size": 10 << 20}, 10 << 20),
    ("d2v : current_size", {"creator_application": b"d2v ", "current_size": 10 << 20}, 10 << 20),
    ("CTXS: current_size", {"creator_application": b"CTXS", "current_size": 10 << 20}, 10 << 20),
    ("tap\\0: current_size", {"creator_application": b"tap\0", "current_size": 10 << 20}, 10 << 20),
    ("tap : CHS", {"creator_application": b"tap ", "current_size": 10 << 20}, 10514432),
    ("vpc : CHS", {"creator_application": b"vpc ", "current_size": 10 << 20}, 10514432),
    ("odd current_size rounds down", {"creator_application": b"win ", "current_size": (10 << 20) + 100}, 10 << 20),
    ("maximum geometry: current_size", {"geometry": (65535, 16, 255), "current_size": 10 << 20}, 10 << 20),
    ("differencing opens as dynamic", {"disk_type": 4}, 10514432),
    ("unknown disk type at 0 opens as dynamic", {"disk_type": 7}, 10514432),
]


@pytest.mark.parametrize(("fields", "size"), [r[1:] for r in SIZE_RULES], ids=[r[0] for r in SIZE_RULES])
def test_virtual_size_rules(tmp_path, fields, size):
    data = _with_footer(_dynamic(tmp_path), **fields)
    image = vpc.decode(data)
    assert image.virtual_size == size
    (tmp_path / "e.vhd").write_bytes(data)
    got = info(tmp_path / "e.vhd")
    assert isinstance(got, dict), got
    assert got["virtual-size"] == size


@needs_qemu
def test_fixed_type_at_zero_hides_cluster_size(tmp_path):
    data = _with_footer(_dynamic(tmp_path), disk_type=2)
    image = vpc.decode(data)
    assert image.subformat == "dynamic" and image.cluster_size is None
    (tmp_path / "e.vhd").write_bytes(data)
    got = info(tmp_path / "e.vhd")
    assert isinstance(got, dict) and "cluster-size" not in got


def _refusals(data: bytes, fixed: bytes) -> list[tuple[str, bytes, type[Exception], str | None]]:
    bad_sum = bytearray(data)
    bad_sum[64] ^= 1
    fixed_bad = bytearray(fixed)
    fixed_bad[-512 + 64] ^= 1
    fixed_type3 = bytearray(fixed)
    struct.pack_into(">I", fixed_type3, len(fixed) - 512 + 60, 3)
    _fix(fixed_type3, len(fixed) - 512)
    bad_magic = bytearray(data)
    bad_magic[512:520] = b"cxsparsX"
    block = bytearray(data)
    struct.pack_into(">I", block, 512 + 32, 3 << 20)
    entries = bytearray(data)
    struct.pack_into(">I", entries, 512 + 28, 4)
    bat = bytearray(data)
    struct.pack_into(">I", bat, 1536, 100)
    return [
        ("bad checksum", bytes(bad_sum), FormatError, "checksum"),
        ("fixed, bad checksum", bytes(fixed_bad), FormatError, "vpc"),
        ("footer at the end not fixed", bytes(fixed_type3), FormatError, "vpc"),
        ("bad dynamic header magic", bytes(bad_magic), FormatError, None),
        ("block size not a power of two", bytes(block), FormatError, None),
        ("page table too small", bytes(entries), FormatError, None),
        ("block past the end", bytes(bat), TruncatedError, None),
        (
            "too large",
            _with_footer(data, creator_application=b"win ", current_size=(0xFF000001) * 512),
            UnsupportedFeatureError,
            None,
        ),
        ("short file, no conectix", b"x" * 100, FormatError, None),
    ]


@needs_qemu
def test_refusals_match_qemu(tmp_path):
    data = _dynamic(tmp_path)
    fixed = create(tmp_path, "vpc", "f.vhd", "1M", "-o", "subformat=fixed")
    for name, bad, exc, _ in _refusals(data, fixed):
        with pytest.raises(exc):
            vpc.decode(bad)
        (tmp_path / "bad.vhd").write_bytes(bad)
        assert isinstance(info(tmp_path / "bad.vhd", "vpc"), str), f"qemu-img opened {name}"


@needs_qemu
def test_truncated_dynamic_disks_open_as_qemu_opens_them(tmp_path):
    """qemu reads zeros past the end: a dynamic VHD without its last footer
    still opens; one cut inside its BAT does not."""
    data = _dynamic(tmp_path)
    for n in (2048, 2047, 1600, 1100):
        (tmp_path / "t.vhd").write_bytes(data[:n])
        got = info(tmp_path / "t.vhd", "vpc")
        try:
            ours = vpc.decode(data[:n]).virtual_size
        except FormatError:
            ours = None
        assert ours == (got["virtual-size"] if isinstance(got, dict) else None), n


def test_truncation_raises_only_our_errors(tmp_path):
    data = _dynamic(tmp_path)
    for n in range(len(data)):
        only_our_errors(vpc.decode, data[:n])


def _differencing(data: bytes) -> bytes:
    """A differencing disk with W2ru, W2ku, MacX and Mac locators."""
    b = bytearray(_with_footer(data, disk_type=4)[:1536] + bytes(2560) + data[1536:])
    names = [
        (b"W2ru", "..\\base.vhd".encode("utf-16-le")),
        (b"W2ku", "C:\\vms\\base.vhd".encode("utf-16-le")),
        (b"MacX", b"file://localhost/vms/base.vhd"),
        (b"Mac ", b"\x01\x02alias"),
    ]
    at = 2048
    for i, (code, raw) in enumerate(names):
        struct.pack_into(">4sIIIQ", b, 512 + 576 + 24 * i, code, 1, len(raw), 0, at)
        b[at : at + len(raw)] = raw
        at += 512
    b[512 + 64 : 512 + 64 + 16] = "base.vhd".encode("utf-16-be")
    struct.pack_into(">Q", b, 512 + 16, 1536 + 2560)  # the BAT moved
    tail = bytearray(b[:512])
    b[-512:] = tail
    return bytes(b)


@needs_qemu
def test_differencing_parent_locators(tmp_path):
    data = _differencing(_dynamic(tmp_path))
    image = vpc.decode(data)
    assert image.differencing and image.backing_filename is None
    assert image.parent_name == "base.vhd"
    assert [p.platform_code for p in image.parent_locators] == [b"W2ru", b"W2ku", b"MacX", b"Mac "]
    assert image.references == (
        Reference("parent-locator", "..\\base.vhd", "image", "vpc"),
        Reference("parent-locator", "C:\\vms\\base.vhd", "image", "vpc"),
        Reference("parent-locator", "file://localhost/vms/base.vhd", "image", "vpc"),
    )
    (tmp_path / "diff.vhd").write_bytes(data)
    got = info(tmp_path / "diff.vhd")
    assert isinstance(got, dict) and got["format"] == "vpc" and "backing-filename" not in got
    assert got["virtual-size"] == image.virtual_size


def test_window_protocol(tmp_path):
    data = _dynamic(tmp_path)
    win = Window(data[:512], len(data))
    from imgchain.formats import NeedBytes

    while True:
        try:
            image = vpc.decode(win)
            break
        except NeedBytes as need:
            win.add(need.offset, data[need.offset : need.offset + need.length])
    assert image == vpc.decode(data)


def test_probe():
    assert vpc.probe(b"conectix" + bytes(504)) == 100
    assert vpc.probe(b"conectiX") == 0 and vpc.probe(b"") == 0 and not vpc.sniff(b"")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=3000), st.integers(0, 2559))
def test_fuzz_only_our_errors(tmp_path, junk, at):
    base = bytearray(b"conectix" + bytes(2552))
    base[at : at + len(junk)] = junk[: 2560 - at]
    only_our_errors(vpc.decode, bytes(base))
