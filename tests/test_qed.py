"""QED decoding and refusals."""

from __future__ import annotations

import craft
import pytest

from imgchain.errors import FormatError, UnsupportedFeatureError
from imgchain.formats import qed


def test_fields_and_backing():
    img = qed.decode(craft.qed(backing=b"base.raw", no_probe=True))
    assert img.cluster_size == 4096
    assert img.virtual_size == 1 << 20
    assert img.backing_filename == "base.raw"
    assert img.backing_format == "raw"
    assert img.header.features == qed.F_BACKING_FILE | qed.F_BACKING_FORMAT_NO_PROBE
    assert not img.dirty


def test_without_no_probe_bit_no_format_is_recorded():
    img = qed.decode(craft.qed(backing=b"b.qcow2"))
    assert (img.backing_filename, img.backing_format) == ("b.qcow2", None)


def test_backing_fields_ignored_without_the_feature_bit():
    data = craft.qed(backing_filename_offset=64, backing_filename_size=5)
    assert qed.decode(data).backing_filename is None


def test_need_check_is_dirty():
    assert qed.decode(craft.qed(features=qed.F_NEED_CHECK)).dirty


REFUSALS = [
    ("unknown feature", {"features": 8}, UnsupportedFeatureError, "features", 0x10),
    ("cluster 3000", {"cluster_size": 3000}, FormatError, "cluster_size", 0x4),
    ("cluster 2048", {"cluster_size": 2048}, FormatError, "cluster_size", 0x4),
    ("cluster 128M", {"cluster_size": 128 << 20}, FormatError, "cluster_size", 0x4),
    ("table 3", {"table_size": 3}, FormatError, "table_size", 0x8),
    ("table 32", {"table_size": 32}, FormatError, "table_size", 0x8),
    ("image size not sectors", {"image_size": 1000}, FormatError, "image_size", 0x30),
    ("image size past tables", {"image_size": qed.max_image_size(4096, 2) + 512}, FormatError, "image_size", 0x30),
    ("header size overflow", {"header_size": 1 << 20}, FormatError, "header_size", 0xC),
    ("l1 unaligned", {"l1_table_offset": 4097}, FormatError, "l1_table_offset", 0x28),
    ("l1 inside header", {"l1_table_offset": 0}, FormatError, "l1_table_offset", 0x28),
    ("l1 past the file", {"l1_table_offset": 8192}, FormatError, "l1_table_offset", 0x28),
    ("one-cluster table (qemu 7.2 refuses)", {"table_size": 1}, FormatError, "l1_table_offset", 0x28),
    (
        "backing name outside header",
        {"features": 1, "backing_filename_offset": 4090, "backing_filename_size": 10},
        FormatError,
        "backing_filename_offset",
        0x38,
    ),
]


@pytest.mark.parametrize(("fields", "exc", "field", "offset"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refusals(fields, exc, field, offset):
    with pytest.raises(exc) as e:
        qed.decode(craft.qed(**fields))
    assert (e.value.field, e.value.offset) == (field, offset)
    assert str(e.value).startswith("qed: ")


def test_backing_name_length_limit():
    long = craft.qed(cluster_size=8192, backing=b"n" * 4095)
    assert qed.decode(long).backing_filename == "n" * 4095
    with pytest.raises(FormatError, match="backing_filename_size 4096"):
        qed.decode(craft.qed(cluster_size=8192, backing=b"n" * 4096))


def test_header_size_zero_is_accepted_as_qemu_does():
    data = craft.qed(header_size=0)
    assert qed.decode(data).header.header_size == 0


def test_bad_magic():
    with pytest.raises(FormatError, match="bad magic"):
        qed.decode(b"QEE\0" + craft.qed()[4:])


@pytest.mark.parametrize(("cluster", "table"), [(4 << 20, 4), (2 << 20, 16), (64 << 20, 2), (64 << 20, 16)])
def test_max_image_size_wraps_as_qemus_does(cluster, table):
    # qed_max_image_size computes in uint64_t: 2**64 and more wrap to 0.
    assert qed.max_image_size(cluster, table) == 0
    fields = {"cluster_size": cluster, "table_size": table, "l1_table_offset": cluster}
    data = craft.patch(craft.qed(image_size=0)[:4096], craft.QED_FIELDS, **fields)
    win = qed.Window(data, size=(1 + table) * cluster)  # the file's size, without its zeros
    assert qed.decode(win).virtual_size == 0
    with pytest.raises(FormatError, match="image_size 512") as e:
        qed.decode(qed.Window(craft.patch(data, craft.QED_FIELDS, image_size=512), size=(1 + table) * cluster))
    assert e.value.field == "image_size"


def test_max_image_size_without_wrapping():
    assert qed.max_image_size(4096, 2) == (1024**2) * 4096
    assert qed.max_image_size(4 << 20, 2) == 1 << 62


def test_file_length_counts_in_whole_sectors_rounded_up():
    data = craft.qed()  # 4 KiB clusters, the L1 table in the last two
    assert qed.decode(data[:-100]).header.table_size == 2
    assert qed.decode(data[:-511]).header.table_size == 2
    with pytest.raises(FormatError, match="l1_table_offset"):
        qed.decode(data[:-512])
