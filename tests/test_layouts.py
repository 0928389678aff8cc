"""The layouts are declared once, in construct; the decoders unpack them
with one ``struct.Struct`` derived from each declaration (formats._base.flat).
Both must read every input alike, and a short input must fail in both."""

from __future__ import annotations

import pytest
from construct import Struct
from hypothesis import given, settings
from hypothesis import strategies as st

from imgchain.errors import FormatError
from imgchain.formats import _base, luks, qcow2, qed

LAYOUTS = [
    (module.__name__.rsplit(".", 1)[1], name, value)
    for module in (qcow2, qed, luks)
    for name, value in vars(module).items()
    if isinstance(value, Struct)
]


def test_every_layout_is_covered():
    names = {name for _, name, _ in LAYOUTS}
    assert {
        "QCOW2_HEADER",
        "QCOW2_HEADER_V3",
        "HEADER_EXTENSION",
        "SNAPSHOT_HEADER",
        "QED_HEADER",
        "LUKS_PHDR",
    } <= names


@pytest.mark.parametrize(("module", "name", "layout"), LAYOUTS, ids=[f"{m}.{n}" for m, n, _ in LAYOUTS])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_flat_unpacker_equals_construct(module, name, layout, data):
    size = layout.sizeof()
    raw = data.draw(st.binary(min_size=size, max_size=size))
    expected = {k: v for k, v in layout.parse(raw).items() if k != "_io"}
    assert _base.flat(layout).record._make(_base.unpack(layout, raw, module, name, 0))._asdict() == expected


@pytest.mark.parametrize(("module", "name", "layout"), LAYOUTS, ids=[f"{m}.{n}" for m, n, _ in LAYOUTS])
def test_sizes_agree_and_short_input_fails(module, name, layout):
    assert _base.flat(layout).size == layout.sizeof()
    short = bytes(layout.sizeof() - 1)
    with pytest.raises(Exception):  # noqa: B017 - construct and struct raise their own
        layout.parse(short)
    with pytest.raises(FormatError):
        _base.unpack(layout, short, module, name, 0)
