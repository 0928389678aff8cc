"""qcow2 decoding: every field, every extension, every refusal rule."""

from __future__ import annotations

import struct

import craft
import pytest

from imgchain.errors import FormatError, TruncatedError, UnsupportedFeatureError
from imgchain.formats import NeedBytes, qcow2

FT = qcow2.EXT_FEATURE_TABLE


def feature(kind: int, bit: int, name: bytes) -> bytes:
    return struct.pack(">BB46s", kind, bit, name)


def test_v3_fields_and_backing():
    img = qcow2.decode(
        craft.qcow2(
            backing=b"base.raw",
            extensions=[craft.ext(qcow2.EXT_BACKING_FORMAT, b"raw")],
            compatible_features=1,
        )
    )
    assert img.header.version == 3
    assert img.compat == "1.1"
    assert img.cluster_size == 512
    assert img.virtual_size == 1 << 20
    assert img.backing_filename == "base.raw"
    assert img.backing_format == "raw"
    assert img.lazy_refcounts is True
    assert img.refcount_bits == 16
    assert img.compression_type == "zlib"
    assert (img.dirty, img.corrupt, img.encrypted, img.extended_l2) == (False, False, False, False)


def test_v2_has_no_v3_fields_and_extensions_start_at_72():
    img = qcow2.decode(craft.qcow2(version=2, extensions=[craft.ext(qcow2.EXT_BACKING_FORMAT, b"qcow2")], backing=b"b"))
    assert img.header.header_length == 72
    assert img.compat == "0.10"
    assert img.backing_format == "qcow2"
    assert img.refcount_bits == 16


def test_virtual_size_rounds_down_to_sectors():
    assert qcow2.decode(craft.qcow2(size=1000)).virtual_size == 512


def test_every_extension_is_decoded():
    exts = [
        craft.ext(FT, feature(0, 0, b"dirty bit") + feature(1, 0, b"lazy refcounts")),
        craft.ext(qcow2.EXT_DATA_FILE, b"data.raw"),
        craft.ext(0x12345678, b"unknown stuff"),
    ]
    img = qcow2.decode(
        craft.qcow2(extensions=exts, incompatible_features=qcow2.INCOMPAT_DATA_FILE, autoclear_features=2)
    )
    assert [f.name for f in img.feature_names] == ["dirty bit", "lazy refcounts"]
    assert img.data_file == "data.raw"
    assert img.has_data_file and img.data_file_raw
    assert [e.type for e in img.unknown_extensions] == [0x12345678]


def test_bitmaps_extension_needs_the_autoclear_bit():
    bm = craft.ext(qcow2.EXT_BITMAPS, struct.pack(">IIQQ", 1, 0, 32, 4096))
    assert qcow2.decode(craft.qcow2(extensions=[bm])).bitmaps_extension is None
    img = qcow2.decode(craft.qcow2(extensions=[bm], autoclear_features=1))
    assert img.bitmaps_extension == qcow2.BitmapsExtension(1, 32, 4096)


def test_full_disk_encryption_pointer():
    fde = craft.ext(qcow2.EXT_FULL_DISK_ENCRYPTION, struct.pack(">QQ", 4096, 2048))
    img = qcow2.decode(craft.qcow2(extensions=[fde], crypt_method=2))
    assert img.full_disk_encryption == qcow2.FullDiskEncryption(4096, 2048)
    assert img.encrypted and img.encryption_format == "luks"


def test_backing_name_is_a_c_string_and_keeps_odd_bytes():
    assert qcow2.decode(craft.qcow2(backing=b"a\xffb\0junk")).backing_filename == "a\udcffb"
    assert qcow2.decode(craft.qcow2(backing=b"\0\0")).backing_filename is None


def test_unknown_incompatible_bit_is_named_from_the_feature_table():
    exts = [craft.ext(FT, feature(0, 40, b"shiny new thing"))]
    with pytest.raises(UnsupportedFeatureError) as e:
        qcow2.decode(craft.qcow2(extensions=exts, incompatible_features=(1 << 40) | (1 << 63)))
    assert "'shiny new thing' (bit 40)" in str(e.value)
    assert "unknown bit 63" in str(e.value)
    assert "[incompatible_features @ 0x48]" in str(e.value)


# (craft arguments, error class, field named in the message, byte offset)
REFUSALS = [
    ("version 4", {"version": 4}, UnsupportedFeatureError, "version", 0x4),
    ("cluster_bits 8", {"cluster_bits": 8}, FormatError, "cluster_bits", 0x14),
    ("cluster_bits 22", {"cluster_bits": 22}, FormatError, "cluster_bits", 0x14),
    ("header_length 100", {"header_length": 100}, FormatError, "header_length", 0x64),
    ("header_length past cluster", {"header_length": 520}, FormatError, "header_length", 0x64),
    (
        "backing offset past cluster",
        {"backing_file_offset": 513, "backing_file_size": 1},
        FormatError,
        "backing_file_offset",
        0x8,
    ),
    ("refcount_order 7", {"refcount_order": 7}, FormatError, "refcount_order", 0x60),
    ("crypt_method 3", {"crypt_method": 3}, UnsupportedFeatureError, "crypt_method", 0x20),
    (
        "compression type 2",
        {"header_length": 112, "compression_type": 2, "incompatible_features": 8},
        UnsupportedFeatureError,
        "compression_type",
        0x68,
    ),
    ("zstd without its bit", {"header_length": 112, "compression_type": 1}, FormatError, "incompatible_features", 0x48),
    ("compression bit with zlib", {"incompatible_features": 8}, FormatError, "incompatible_features", 0x48),
    ("extended L2 with 512-byte clusters", {"incompatible_features": 16}, FormatError, "incompatible_features", 0x48),
    (
        "unknown incompatible bit",
        {"incompatible_features": 1 << 5},
        UnsupportedFeatureError,
        "incompatible_features",
        0x48,
    ),
    ("no refcount table", {"refcount_table_clusters": 0}, FormatError, "refcount_table_clusters", 0x38),
    (
        "refcount table too large",
        {"refcount_table_clusters": (8 << 20) // 512 + 1},
        FormatError,
        "refcount_table_clusters",
        0x38,
    ),
    ("refcount table unaligned", {"refcount_table_offset": 513}, FormatError, "refcount_table_offset", 0x30),
    ("too many snapshots", {"nb_snapshots": 65537}, FormatError, "nb_snapshots", 0x3C),
    ("snapshot table unaligned", {"snapshots_offset": 100}, FormatError, "snapshots_offset", 0x40),
    ("L1 too large", {"l1_size": 4194305}, FormatError, "l1_size", 0x24),
    ("L1 unaligned", {"l1_table_offset": 1000}, FormatError, "l1_table_offset", 0x28),
    ("L1 too small", {"l1_size": 1}, FormatError, "l1_size", 0x24),
    ("size too big", {"size": 1 << 63, "l1_size": 4194304}, FormatError, "size", 0x18),
]


@pytest.mark.parametrize(("fields", "exc", "field", "offset"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refusals_name_field_and_offset(fields, exc, field, offset):
    data = craft.qcow2(**fields)
    with pytest.raises(exc) as e:
        qcow2.decode(data)
    assert e.value.field == field
    assert e.value.offset == offset
    assert f"[{field} @ {offset:#x}]" in str(e.value)
    assert str(e.value).startswith("qcow2: ")


def test_backing_name_1023_is_the_limit():
    ok = craft.qcow2(cluster_bits=11, backing=b"x" * 1023)
    assert qcow2.decode(ok).backing_filename == "x" * 1023
    with pytest.raises(FormatError, match="backing_file_size 1024"):
        qcow2.decode(craft.qcow2(cluster_bits=11, backing=b"x" * 1024))


def test_backing_name_may_not_cross_the_first_cluster():
    data = craft.qcow2(backing=b"abc", backing_file_offset=510, backing_file_size=3)
    with pytest.raises(FormatError, match="backing_file_size 3 too long"):
        qcow2.decode(data)


def test_backing_name_outside_the_file_is_refused():
    data = craft.qcow2(backing=b"base.raw")
    cut = qcow2.decode(data).header.backing_file_offset + 4
    with pytest.raises(TruncatedError, match="backing file name"):
        qcow2.decode(data[:cut])


@pytest.mark.parametrize(
    ("ext", "match"),
    [
        (struct.pack(">II", 0x1234, 1000), "runs past the header area"),
        (craft.ext(qcow2.EXT_BACKING_FORMAT, b"x" * 16), "backing format name of 16 bytes"),
        (craft.ext(qcow2.EXT_FULL_DISK_ENCRYPTION, struct.pack(">QQ", 4096, 1)), "without LUKS"),
        (craft.ext(qcow2.EXT_BITMAPS, b"\0" * 16), "bitmaps extension of 16 bytes"),
    ],
)
def test_bad_extensions(ext, match):
    with pytest.raises(FormatError, match=match):
        qcow2.decode(craft.qcow2(extensions=[ext], autoclear_features=1))


def test_extension_may_not_cross_the_backing_name():
    # The extension area ends where the backing name starts.
    data = craft.qcow2(extensions=[craft.ext(0x1234, b"12345678")], backing=b"b")
    bad = craft.patch(data, craft.QCOW2_FIELDS, backing_file_offset=110)
    with pytest.raises(FormatError, match="runs past the header area"):
        qcow2.decode(bad)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"reserved32": 1}, "reserved field"),
        ({"nb_bitmaps": 0}, "zero bitmaps"),
        ({"nb_bitmaps": 65536}, "above 65535"),
        ({"bitmap_directory_offset": 4097}, "not cluster aligned"),
        ({"bitmap_directory_size": 1024 * 65535 + 1}, "bitmap_directory_size"),
    ],
)
def test_bitmaps_extension_refusals(fields, match):
    values = {"nb_bitmaps": 1, "reserved32": 0, "bitmap_directory_size": 32, "bitmap_directory_offset": 4096} | fields
    body = struct.pack(">IIQQ", *values.values())
    with pytest.raises(FormatError, match=match):
        qcow2.decode(craft.qcow2(extensions=[craft.ext(qcow2.EXT_BITMAPS, body)], autoclear_features=1))


def _with_snapshot(extra: bytes, id_str: bytes = b"1", name: bytes = b"snap") -> bytes:
    entry = struct.pack(">QIHHIIQII", 0, 0, len(id_str), len(name), 7, 8, 12_345_678_901, 5, len(extra))
    entry += extra + id_str + name
    data = bytearray(craft.qcow2(nb_snapshots=1, snapshots_offset=2048, file_size=4096))
    data[2048 : 2048 + len(entry)] = entry
    return bytes(data)


def test_snapshot_table():
    data = _with_snapshot(struct.pack(">QQQ", 99, 1 << 20, 42))
    img = qcow2.decode(data)
    (snap,) = qcow2.decode_snapshot_table(data, img)
    assert (snap.id, snap.name, snap.date_sec, snap.date_nsec) == ("1", "snap", 7, 8)
    assert (snap.vm_clock_nsec, snap.vm_state_size, snap.disk_size, snap.icount) == (12_345_678_901, 99, 1 << 20, 42)
    (old,) = qcow2.decode_snapshot_table(_with_snapshot(b""), img)
    assert (old.vm_state_size, old.disk_size, old.icount) == (5, None, None)


def test_snapshot_extra_data_limit():
    data = _with_snapshot(b"\0" * 1025)
    with pytest.raises(FormatError, match="extra_data_size 1025"):
        qcow2.decode_snapshot_table(data, qcow2.decode(data))


def _with_bitmap(**entry_fields: int) -> bytes:
    f = {"table_offset": 3072, "table_size": 1, "flags": 2, "type": 1, "granularity_bits": 16, "extra": 0}
    f |= entry_fields
    name = b"b0"
    entry = (
        struct.pack(
            ">QIIBBHI",
            f["table_offset"],
            f["table_size"],
            f["flags"],
            f["type"],
            f["granularity_bits"],
            len(name),
            f["extra"],
        )
        + name
    )
    entry += b"\0" * (-len(entry) % 8)
    ext = craft.ext(qcow2.EXT_BITMAPS, struct.pack(">IIQQ", 1, 0, len(entry), 2048))
    data = bytearray(craft.qcow2(extensions=[ext], autoclear_features=1, file_size=4096))
    data[2048 : 2048 + len(entry)] = entry
    return bytes(data)


def test_bitmap_directory():
    data = _with_bitmap()
    (bm,) = qcow2.decode_bitmap_directory(data, qcow2.decode(data))
    assert (bm.name, bm.granularity, bm.flag_names) == ("b0", 65536, ("auto",))


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"type": 2}, "type 2"),
        ({"granularity_bits": 8}, "granularity_bits 8"),
        ({"flags": 4}, "reserved flags"),
        ({"table_offset": 100}, "not cluster aligned"),
        ({"table_size": 0}, "bitmap_table_size is 0"),
    ],
)
def test_bitmap_directory_refusals(fields, match):
    data = _with_bitmap(**fields)
    with pytest.raises(FormatError, match=match):
        qcow2.decode_bitmap_directory(data, qcow2.decode(data))


def test_sniff():
    assert qcow2.sniff(craft.qcow2())
    assert not qcow2.sniff(b"")
    assert not qcow2.sniff(b"QFI\xfb\0\0\0\1")  # qemu's "qcow" version 1
    assert not qcow2.sniff(b"QFI\xfb\0\0\0\0")  # version 0 probes as raw
    assert qcow2.sniff(b"QFI\xfb\0\0\0\x09")  # probes as qcow2, then refused


# -- qemu's limits, and costs that stay linear and bounded ------------------------


def _snapshot_entry(i: int, name: bytes) -> bytes:
    extra = struct.pack(">QQQ", i, 1 << 20, (1 << 64) - 1)
    id_str = str(i + 1).encode()
    entry = struct.pack(">QIHHIIQII", 0, 0, len(id_str), len(name), 1_700_000_000, i, 0, 0, len(extra))
    entry += extra + id_str + name
    return entry + b"\0" * (-len(entry) % 8)


def _with_snapshots(names: list[bytes]) -> bytes:
    table = b"".join(_snapshot_entry(i, n) for i, n in enumerate(names))
    head = craft.qcow2(cluster_bits=16, nb_snapshots=len(names), snapshots_offset=1 << 16, file_size=1 << 16)
    return head + table


def _fill(decode, data: bytes) -> tuple[object, int]:
    """Decode as imgchain.probe does (a first read of 4096 bytes, then what
    the decoder asks for, at least 64 KiB at a time); return the result and
    how many passes the decoder made."""
    win = qcow2.Window(data[:4096], len(data))
    passes = 0
    while True:
        passes += 1
        try:
            return decode(win), passes
        except NeedBytes as need:
            length = max(need.length, 1 << 16)
            win.add(need.offset, data[need.offset : need.offset + length])


def test_a_large_snapshot_table_takes_few_passes():
    # Each pass decodes the table from its start: passes must not grow with it.
    data = _with_snapshots([b"snap%d" % i for i in range(qcow2.MAX_SNAPSHOTS)])
    image = qcow2.decode(data)
    snaps, passes = _fill(lambda w: qcow2.decode_snapshot_table(w, image), data)
    assert len(snaps) == qcow2.MAX_SNAPSHOTS
    assert (snaps[-1].id, snaps[-1].name, snaps[-1].vm_state_size) == ("65536", "snap65535", 65535)
    assert passes <= 3


def test_growing_snapshot_entries_take_logarithmic_passes():
    # Entries that grow defeat any guess from the first ones: the window is
    # still asked for twice what was decoded so far.
    data = _with_snapshots([b"n" * (i // 4) for i in range(4000)])
    image = qcow2.decode(data)
    snaps, passes = _fill(lambda w: qcow2.decode_snapshot_table(w, image), data)
    assert len(snaps) == 4000
    assert passes <= 12


class _EndlessTable(qcow2.Window):
    """A window on a snapshot table of huge entries (names of 65535 bytes)
    that never ends, recording the furthest byte asked for."""

    ENTRY = 40 + 2 * 0xFFFF

    def __init__(self, head: bytes, table: int) -> None:
        super().__init__(head, size=1 << 40)
        self.table = table
        self.furthest = 0

    def get(self, offset, length, fmt, field, field_offset=None, *, ahead=0):  # type: ignore[no-untyped-def]
        if offset < self.table:
            return super().get(offset, length, fmt, field, field_offset, ahead=ahead)
        self.furthest = max(self.furthest, offset + length)
        stride = (self.ENTRY + 7) & ~7
        if (offset - self.table) % stride == 0 and length == 40:
            return struct.pack(">QIHHIIQII", 0, 0, 0xFFFF, 0xFFFF, 0, 0, 0, 0, 0)
        return b"a" * length


def test_snapshot_table_past_64_mib_is_refused_before_it_is_read():
    head = craft.qcow2(cluster_bits=16, nb_snapshots=qcow2.MAX_SNAPSHOTS, snapshots_offset=1 << 16)
    win = _EndlessTable(head, 1 << 16)
    with pytest.raises(FormatError, match="snapshot table larger than 67108864 bytes"):
        qcow2.decode_snapshot_table(win, qcow2.decode(head))
    assert win.furthest <= (1 << 16) + qcow2.MAX_SNAPSHOTS_SIZE


def test_snapshot_table_span_follows_qemus_limit():
    def span(n: int) -> int:
        return qcow2.snapshot_table_span(qcow2.decode(craft.qcow2(nb_snapshots=n, snapshots_offset=1024)))

    assert span(0) == 0
    assert span(1) == 40 + 1024 + 2 * 65535 + 7
    assert span(qcow2.MAX_SNAPSHOTS) == 64 << 20


def _extension_bomb(body: bytes = b"", tail: list[bytes] | None = None) -> bytes:
    cluster = 1 << 21
    one = craft.ext(0x7E570000, body)
    tail_bytes = b"".join(tail or [])
    count = (cluster - 104 - len(tail_bytes) - 8) // len(one)
    data = bytearray(craft.qcow2(cluster_bits=21))
    area = one * count + tail_bytes
    data[104 : 104 + len(area)] = area
    return bytes(data)


def test_a_cluster_of_unknown_extensions_is_walked_in_bounded_memory():
    import tracemalloc

    data = _extension_bomb()
    tracemalloc.start()
    image = qcow2.decode(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert image.unknown_extension_count == (len(data) // 3 - 104 - 8) // 8
    assert len(image.unknown_extensions) == qcow2.MAX_KEPT_UNKNOWN_EXTENSIONS
    assert image.unknown_extensions[1] == qcow2.HeaderExtension(0x7E570000, 112, 0)
    assert peak < 4 << 20  # was 39 MiB: one object per extension


def test_known_extensions_after_many_unknown_ones_are_read():
    tail = [craft.ext(qcow2.EXT_DATA_FILE, b"far.data"), craft.ext(qcow2.EXT_BACKING_FORMAT, b"raw")]
    data = _extension_bomb(b"12345678", tail)
    image = qcow2.decode(data)
    assert image.data_file == "far.data"
    assert image.unknown_extension_count == (len(data) // 3 - 104 - 8 - 16 - 16) // 16


def test_an_extension_area_cut_short_by_the_file_is_refused():
    data = _extension_bomb()[: 1 << 20]
    with pytest.raises(TruncatedError, match="header extension"):
        qcow2.decode(data)


def test_a_bitmap_directory_over_16_mib_is_decoded():
    # qemu allows a directory of up to QCOW2_MAX_BITMAP_DIRECTORY_SIZE (64 MiB less 64 KiB).
    entries = bytearray()
    count = 16_300
    for i in range(count):
        name = (b"%06d" % i).ljust(1023, b"b")
        entry = struct.pack(">QIIBBHI", 3 * 4096, 1, 1, 1, 16, len(name), 0) + name
        entries += entry + b"\0" * (-len(entry) % 8)
    ext = craft.ext(qcow2.EXT_BITMAPS, struct.pack(">IIQQ", count, 0, len(entries), 4 * 4096))
    data = craft.qcow2(cluster_bits=12, extensions=[ext], autoclear_features=1, file_size=4 * 4096) + bytes(entries)
    assert len(entries) > 16 << 20
    bitmaps = qcow2.decode_bitmap_directory(data, qcow2.decode(data))
    assert len(bitmaps) == count
    assert bitmaps[-1].name.startswith("016299b") and bitmaps[-1].flag_names == ("in-use",)
