"""Build qcow2 and QED images byte by byte, for tests that need exact
control of every field (qemu-made images are in fixtures/)."""

from __future__ import annotations

import struct

from imgchain.formats import Window

QCOW2_FIELDS = {
    "magic": (0, ">I"),
    "version": (4, ">I"),
    "backing_file_offset": (8, ">Q"),
    "backing_file_size": (16, ">I"),
    "cluster_bits": (20, ">I"),
    "size": (24, ">Q"),
    "crypt_method": (32, ">I"),
    "l1_size": (36, ">I"),
    "l1_table_offset": (40, ">Q"),
    "refcount_table_offset": (48, ">Q"),
    "refcount_table_clusters": (56, ">I"),
    "nb_snapshots": (60, ">I"),
    "snapshots_offset": (64, ">Q"),
    "incompatible_features": (72, ">Q"),
    "compatible_features": (80, ">Q"),
    "autoclear_features": (88, ">Q"),
    "refcount_order": (96, ">I"),
    "header_length": (100, ">I"),
    "compression_type": (104, ">B"),
}

QED_FIELDS = {
    "magic": (0, "<I"),
    "cluster_size": (4, "<I"),
    "table_size": (8, "<I"),
    "header_size": (12, "<I"),
    "features": (16, "<Q"),
    "compat_features": (24, "<Q"),
    "autoclear_features": (32, "<Q"),
    "l1_table_offset": (40, "<Q"),
    "image_size": (48, "<Q"),
    "backing_filename_offset": (56, "<I"),
    "backing_filename_size": (60, "<I"),
}


def ext(magic: int, data: bytes) -> bytes:
    """One qcow2 header extension, padded to 8 bytes."""
    return struct.pack(">II", magic, len(data)) + data + b"\0" * (-len(data) % 8)


def patch(data: bytes, fields: dict[str, tuple[int, str]], **values: int) -> bytes:
    out = bytearray(data)
    for name, value in values.items():
        offset, fmt = fields[name]
        struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def qcow2(
    *,
    version: int = 3,
    cluster_bits: int = 9,
    size: int = 1 << 20,
    backing: bytes | None = None,
    extensions: list[bytes] | None = None,
    file_size: int | None = None,
    **fields: int,
) -> bytes:
    """A small valid qcow2 image (tables left empty), then ``fields`` patched."""
    cluster = 1 << cluster_bits
    header_length = 104 if version == 3 else 72
    l2_bits = cluster_bits - 3
    l1_size = min(max(1, -(-size // (1 << (cluster_bits + l2_bits)))), 1 << 20)
    exts = b"".join(extensions or []) + b"\0" * 8
    head = bytearray(cluster)
    base = {
        "magic": 0x514649FB,
        "version": version,
        "cluster_bits": cluster_bits,
        "size": size,
        "l1_size": l1_size,
        "l1_table_offset": 2 * cluster,
        "refcount_table_offset": cluster,
        "refcount_table_clusters": 1,
    }
    if version == 3:
        base.update(refcount_order=4, header_length=header_length)
    head[header_length : header_length + len(exts)] = exts
    if backing is not None:
        at = header_length + len(exts)
        head[at : at + len(backing)] = backing
        base.update(backing_file_offset=at, backing_file_size=len(backing))
    data = patch(bytes(head), QCOW2_FIELDS, **base)
    total = file_size if file_size is not None else 3 * cluster + l1_size * 8
    data = (data + b"\0" * max(0, total - len(data)))[:total]
    return patch(data, QCOW2_FIELDS, **fields)


def qed(
    *,
    cluster_size: int = 4096,
    table_size: int = 2,
    image_size: int = 1 << 20,
    backing: bytes | None = None,
    no_probe: bool = False,
    **fields: int,
) -> bytes:
    """A small valid QED image (tables left empty), then ``fields`` patched."""
    base = {
        "magic": 0x00444551,
        "cluster_size": cluster_size,
        "table_size": table_size,
        "header_size": 1,
        "l1_table_offset": cluster_size,
        "image_size": image_size,
    }
    head = bytearray(cluster_size * (1 + table_size))
    if backing is not None:
        head[64 : 64 + len(backing)] = backing
        base.update(features=1 | (4 if no_probe else 0), backing_filename_offset=64, backing_filename_size=len(backing))
    data = patch(bytes(head), QED_FIELDS, **base)
    return patch(data, QED_FIELDS, **fields)


def rebacked(data: bytes, name: bytes | None, fmt: bytes | None = None) -> bytes:
    """A real qcow2 image (made by qemu-img) with its backing name and
    recorded format replaced: the extension area is rewritten (holding the
    backing-format extension and any data file extension) and the name
    placed right after it, in the first cluster."""
    import imgchain.formats.qcow2 as q

    image = q.decode(data)
    h = image.header
    out = bytearray(data)
    start = h.header_length
    end = 1 << h.cluster_bits
    exts = b""
    if fmt is not None:
        exts += ext(q.EXT_BACKING_FORMAT, fmt)
    if image.data_file is not None:
        exts += ext(q.EXT_DATA_FILE, image.data_file.encode())
    exts += b"\0" * 8
    at = start + len(exts)
    payload = exts + (name or b"")
    assert start + len(payload) <= end, "does not fit in the first cluster"
    out[start:end] = payload + b"\0" * (end - start - len(payload))
    values = {"backing_file_offset": at if name else 0, "backing_file_size": len(name) if name else 0}
    return patch(bytes(out), QCOW2_FIELDS, **values)


class RecordingWindow(Window):
    """A window that remembers the furthest byte a decoder looked at."""

    __slots__ = ("furthest",)

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.furthest = 0

    def get(self, offset, length, fmt, field, field_offset=None, *, ahead=0):  # type: ignore[no-untyped-def]
        self.furthest = max(self.furthest, offset + length)
        return super().get(offset, length, fmt, field, field_offset, ahead=ahead)
