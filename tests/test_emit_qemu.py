"""The qemu-img look-alike writers."""

from __future__ import annotations

import pytest

from imgchain.emit import qemu


def test_key_order_is_qemus_hash_order():
    # As qemu-img 7.2 prints an ImageInfo (seen in its output).
    keys = [
        "filename",
        "format",
        "dirty-flag",
        "actual-size",
        "virtual-size",
        "cluster-size",
        "backing-filename",
        "full-backing-filename",
        "backing-filename-format",
        "snapshots",
        "format-specific",
        "encrypted",
    ]
    text = qemu.dumps(dict.fromkeys(keys, 1))
    order = [line.split('"')[1] for line in text.splitlines()[1:-1]]
    assert order == [
        "backing-filename-format",
        "snapshots",
        "virtual-size",
        "filename",
        "cluster-size",
        "format",
        "actual-size",
        "format-specific",
        "full-backing-filename",
        "encrypted",
        "backing-filename",
        "dirty-flag",
    ]


def test_layout_and_escapes():
    assert qemu.dumps({"flags": []}) == '{\n    "flags": [\n    ]\n}'
    assert qemu.dumps('dir é/"x"\\\t\x7f😀') == '"dir \\u00E9/\\"x\\"\\\\\\t\\u007F\\uD83D\\uDE00"'
    assert qemu.dumps("b\udcff.raw") == '"b\\uFFFD.raw"'
    assert qemu.dumps([True, False, 3]) == "[\n    true,\n    false,\n    3\n]"


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (512, "512 B"),
        (999, "999 B"),
        (1000, "0.977 KiB"),
        (4096, "4 KiB"),
        (266240, "260 KiB"),
        (1 << 20, "1 MiB"),
        (1 << 30, "1 GiB"),
        (1 << 40, "1 TiB"),
        (462848, "452 KiB"),
    ],
)
def test_size_to_str(n, text):
    assert qemu.size_to_str(n) == text
