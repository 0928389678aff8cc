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
from imgchain.formats import Window, qcow2

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


class RecordingWindow(Window):
    """A window that remembers the furthest byte a decoder looked at."""

    __slots__ = ("furthest",)

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.furthest = 0

    def get(self, offset, length, fmt, field, field_offset=None, *, ahead=0):  # type: ignore[no-untyped-def]
        self.furthest = max(self.furthest, offset + length)
        return super().get(offset, length, fmt, field, field_offset, ahead=ahead)


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
    win = RecordingWindow(data)
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
        (b"KDMV", "vmdk"),
        (b"conectix", "vpc"),
        (b"vhdxfile", "vhdx"),
        (b"QFI\xfb\0\0\0\1", "qcow"),
        (b"LUKS\xba\xbe\0\1", "luks"),
    ],
)
def test_formats_qemu_knows_are_refused_not_called_raw(head, name):
    with pytest.raises(FormatError, match=name):
        formats.probe(head + b"\0" * 100)


def test_dmg_goes_by_name_as_in_qemu():
    with pytest.raises(FormatError, match="dmg"):
        formats.probe(b"\0" * 512, "disk.dmg")
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
