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


def test_plain_strings_and_escaped_ones():
    assert qemu.dumps(" !#~[]az09") == '" !#~[]az09"'
    assert qemu.dumps('a"b\\c') == '"a\\"b\\\\c"'
    assert qemu.dumps("tab\there") == '"tab\\there"'


def _info(tmp_path, data: bytes) -> dict:
    from imgchain.chain import resolve_chain

    path = tmp_path / "a.qcow2"
    path.write_bytes(data)
    (tmp_path / "a.data").write_bytes(b"")
    return qemu.image_info(resolve_chain(str(path)).top)


def _snapshot_table_at(data: bytes, offset: int) -> bytes:
    import struct

    entry = struct.pack(">QIHHIIQII", 0, 0, 1, 2, 7, 8, 0, 0, 0) + b"1s1"
    return data[:offset] + entry + bytes(len(data) - offset - len(entry))


def test_no_snapshots_are_listed_with_an_external_data_file(tmp_path):
    import craft

    from imgchain.formats import qcow2

    ext = [craft.ext(qcow2.EXT_DATA_FILE, b"a.data")]
    plain = _snapshot_table_at(craft.qcow2(nb_snapshots=1, snapshots_offset=2048, file_size=4096), 2048)
    assert [s["name"] for s in _info(tmp_path, plain)["snapshots"]] == ["s1"]
    with_data = craft.qcow2(
        extensions=ext, nb_snapshots=1, snapshots_offset=2048, file_size=4096, incompatible_features=4
    )
    info = _info(tmp_path, _snapshot_table_at(with_data, 2048))
    assert "snapshots" not in info
    assert info["format-specific"]["data"]["data-file"] == "a.data"


def test_version_2_shows_no_data_file(tmp_path):
    import craft

    from imgchain.formats import qcow2

    ext = [craft.ext(qcow2.EXT_DATA_FILE, b"a.data")]
    v2 = _info(tmp_path, craft.qcow2(version=2, extensions=ext))["format-specific"]["data"]
    assert v2 == {"compat": "0.10", "refcount-bits": 16, "compression-type": "zlib"}
    v3 = _info(tmp_path, craft.qcow2(extensions=ext))["format-specific"]["data"]
    assert v3["data-file"] == "a.data" and "data-file-raw" not in v3
