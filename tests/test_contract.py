"""Contract tests run over every registered format, real images included:
truncation is refused cleanly at every length, mutated and arbitrary input
raises only our errors, and an empty input sniffs as nothing but raw."""

from __future__ import annotations

import contextlib
import pathlib

import craft
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgchain import formats
from imgchain.errors import FormatError
from imgchain.formats import qcow2

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures"

HEADERED = [m for m in formats.REGISTRY if m.NAME != "raw"]


def samples() -> list[tuple[str, bytes]]:
    """(name, bytes) of real qemu-made images and crafted ones."""
    out = [
        ("craft-qcow2-v3", craft.qcow2(backing=b"base.raw", extensions=[craft.ext(qcow2.EXT_BACKING_FORMAT, b"raw")])),
        ("craft-qcow2-v2", craft.qcow2(version=2, backing=b"base.raw")),
        ("craft-qed", craft.qed(backing=b"base.raw", no_probe=True)),
    ]
    for path in sorted(FIXTURES.rglob("*")):
        if path.suffix in (".qcow2", ".qed") and path.is_file():
            out.append((str(path.relative_to(FIXTURES)), path.read_bytes()))
    return out


SAMPLES = samples()


def decode_all(data: bytes) -> object:
    """Probe and decode like the probe module, tables included."""
    module = formats.probe(data)
    image = module.decode(data)
    if isinstance(image, qcow2.Qcow2Image):
        qcow2.decode_snapshot_table(data, image)
        qcow2.decode_bitmap_directory(data, image)
    return image


@pytest.mark.parametrize(("name", "data"), SAMPLES, ids=[s[0] for s in SAMPLES])
def test_truncation_at_every_length_is_refused(name, data):
    module = formats.probe(data)
    assert module is not formats.raw
    win = craft.RecordingWindow(data)
    module.decode(win)
    needed = win.furthest
    assert needed > 8
    for n in range(needed):
        with pytest.raises(FormatError):
            module.decode(data[:n])


@pytest.mark.parametrize("module", HEADERED, ids=lambda m: m.NAME)
def test_empty_input_sniffs_as_nothing(module):
    assert module.sniff(b"") is False


def test_empty_file_probes_as_raw():
    assert formats.probe(b"") is formats.raw


@pytest.mark.parametrize(
    ("head", "name"),
    [
        (b"conectix", "vpc"),
        (b"vhdxfile", "vhdx"),
        (b"LUKS\xba\xbe\0\1", "luks"),
        (b"WithoutFreeSpace\2\0\0\0", "parallels"),
        (b"WithouFreSpacExt\2\0\0\0", "parallels"),
    ],
)
def test_every_format_qemu_probes_is_its_own_not_raw(head, name):
    """A header of each format qemu knows is decoded as that format (these
    bare ones are refused by its rules), never called raw."""
    assert formats.probe_name(head + b"\0" * 100) == name
    with pytest.raises(FormatError, match=name):
        formats.probe(head + b"\0" * 100).decode(head + b"\0" * 100)


def test_near_misses_are_raw_as_in_qemu():
    assert formats.probe_name(b"LUKS\xba\xbe\0\2" + bytes(600)) == "raw"  # LUKS2: raw to qemu 7.2
    assert formats.probe_name(b"WithoutFreeSpace\3\0\0\0" + bytes(600)) == "raw"  # parallels version 3
    assert formats.probe_name(b"Bochs Virtual HD Image\0" + bytes(600)) == "raw"  # bochs needs type and version
    # cloop's old preamble (offset=32) is not the one qemu 7.2 looks for
    assert formats.probe_name(b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$IMAGE offset=32\n" + bytes(600)) == "raw"


def test_ties_go_to_the_driver_qemu_asks_first():
    """A qcow2 header whose snapshots_offset spells the VDI signature at
    0x40 probes as vdi in qemu 7.2 (and is refused there)."""
    head = bytearray(craft.qcow2())
    head[0x40:0x44] = b"\x7f\x10\xda\xbe"
    assert formats.probe_name(bytes(head)) == "vdi"
    qed_head = bytearray(craft.qed())
    qed_head[0x40:0x44] = b"\x7f\x10\xda\xbe"
    assert formats.probe_name(bytes(qed_head)) == "qed"


@pytest.mark.parametrize(
    ("head", "name"),
    [
        (b"KDMV", "vmdk"),
        (b"COWD", "vmdk"),
        (b"version=1\n", "vmdk"),
        (b"# Disk DescriptorFile\r\n#c\r\n   \r\nversion=3\r\n", "vmdk"),
        (b"# a comment, then no version line\ncreateType=x\n", "raw"),
        (b"# blank line first\n\nversion=1\n", "raw"),  # (qemu: an empty line ends the probe)
        (b"QFI\xfb\0\0\0\1", "qcow"),
        (b"QFI\xfb\0\0\0\0", "raw"),
        (b"QFI\xfb\0\0\0\3", "qcow2"),
        (b"QED\0", "qed"),
    ],
)
def test_the_probe_scores_as_qemu_does(head, name):
    assert formats.probe_name(head) == name
    assert formats.probe_name(head + b"\0" * 1000) == name


def test_dmg_goes_by_name_as_in_qemu():
    assert formats.probe_name(b"\0" * 512, "disk.dmg") == "dmg"
    assert formats.probe_name(b"\0" * 512, ".dmg") == "raw"  # (qemu wants a name longer than ".dmg")
    assert formats.probe(b"\0" * 512, "disk.img") is formats.raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes_raise_only_our_errors(data):
    for module in HEADERED:
        with contextlib.suppress(FormatError):
            module.decode(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sample=st.sampled_from(SAMPLES),
    edits=st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_mutated_real_headers_raise_only_our_errors(sample, edits):
    data = bytearray(sample[1])
    for pos, value in edits:
        if pos < len(data):
            data[pos] = value
    with contextlib.suppress(FormatError):
        decode_all(bytes(data))


# -- the probe's view: declared formats, and read caps that follow qemu's limits ------

HEADER_SAMPLES = [
    ("craft-qcow2-v3", "qcow2", SAMPLES[0][1]),
    ("craft-qcow2-v2", "qcow2", SAMPLES[1][1]),
    ("craft-qed", "qed", SAMPLES[2][1]),
]


@pytest.mark.parametrize(("name", "fmt", "data"), HEADER_SAMPLES, ids=[s[0] for s in HEADER_SAMPLES])
def test_declared_format_truncated_or_broken_is_that_formats_error(tmp_path, name, fmt, data):
    """A file declared as a format, carrying that format's magic (as qemu
    probes it) but cut short or broken, fails as that format: the error
    says the content probes as the declared format, not as another."""
    from imgchain import probe

    module = formats.by_name(fmt)
    win = craft.RecordingWindow(data)
    module.decode(win)
    path = tmp_path / "img"
    for n in sorted({8, 20, 64, 71, 100, win.furthest - 1} - set(range(win.furthest, 101))):
        path.write_bytes(data[:n])
        with pytest.raises(FormatError) as e:
            probe.read_image(str(path), fmt)
        assert (e.value.fmt, e.value.probed_format) == (fmt, fmt), n
    broken = bytearray(data)
    broken[20 if fmt == "qcow2" else 4] = 0x7F  # cluster_bits / cluster_size out of range
    path.write_bytes(bytes(broken))
    with pytest.raises(FormatError) as e:
        probe.read_image(str(path), fmt)
    assert (e.value.fmt, e.value.probed_format) == (fmt, fmt)


def test_declared_format_on_other_content_says_what_it_probes_as(tmp_path):
    from imgchain import probe

    path = tmp_path / "img"
    path.write_bytes(craft.qed())
    with pytest.raises(FormatError) as e:
        probe.read_image(str(path), "qcow2")
    assert e.value.probed_format == "qed"
    path.write_bytes(b"QFI\xfb\0\0\0\1" + bytes(600))  # qcow version 1: qemu's "qcow", not qcow2
    with pytest.raises(FormatError) as e:
        probe.read_image(str(path), "qcow2")
    assert e.value.probed_format == "qcow"


def test_a_broken_snapshot_table_names_the_probed_format(tmp_path):
    from imgchain import probe

    path = tmp_path / "img"
    path.write_bytes(craft.qcow2(nb_snapshots=1, snapshots_offset=4096, file_size=2048))
    with pytest.raises(FormatError) as e:
        probe.read_image(str(path), "qcow2")
    assert e.value.probed_format == "qcow2"


def test_tables_may_be_read_as_far_as_qemu_allows(tmp_path):
    """A 17 MB bitmap directory (qemu allows 64 MiB) is read, past the
    16 MiB that the headers of an image may cost, and no further."""
    import struct

    from imgchain import probe

    entries = bytearray()
    count = 16_300
    for i in range(count):
        name = (b"%06d" % i).ljust(1023, b"b")
        entry = struct.pack(">QIIBBHI", 3 * 4096, 1, 1, 1, 16, len(name), 0) + name
        entries += entry + b"\0" * (-len(entry) % 8)
    ext = craft.ext(qcow2.EXT_BITMAPS, struct.pack(">IIQQ", count, 0, len(entries), 4 * 4096))
    path = tmp_path / "bitmaps.qcow2"
    path.write_bytes(craft.qcow2(cluster_bits=12, extensions=[ext], autoclear_features=1, file_size=4 * 4096) + entries)
    image = probe.read_image(str(path))
    assert len(image.bitmaps) == count
    assert len(entries) < image.bytes_read <= len(entries) + probe.INITIAL_READ + 2 * probe.READ_AHEAD
    assert probe.read_image(str(path), tables=False).bytes_read == probe.INITIAL_READ
