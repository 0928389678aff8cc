"""``qemu-img info`` output, JSON and human, from a chain's layers.

The JSON is the same as qemu-img 7.2's byte for byte, not only key for key:
qemu prints an object's keys in the order of its QDict hash buckets, so
:func:`dumps` sorts them the same way, and writes strings and layout as
qemu's JSON writer does (4-space indent, ``\\uXXXX`` in upper case for all
but printable ASCII, an empty array as ``[`` newline ``]``).
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from imgchain.chain import Layer
from imgchain.errors import name_text
from imgchain.formats import qcow2
from imgchain.names import combine

if TYPE_CHECKING:
    from imgchain.formats import luks

__all__ = ["dumps", "human", "human_one", "image_info", "size_to_str"]

JSON = dict[str, Any]


def image_info(layer: Layer) -> JSON:
    """What ``qemu-img info --output=json`` prints for one layer, as a dict
    whose keys are in QAPI order (the order :func:`dumps` reorders from)."""
    image = layer.image
    d = image.decoded
    info: JSON = {"filename": layer.filename, "format": image.format}
    # qemu reports QED's need-check bit as dirty-flag false; it reads the
    # qcow2 dirty bit (a version 3 field) as it is.
    # qemu-img prints dirty-flag only where the driver answers bdrv_get_info
    # (vmdk: only when all its extents are alike); the other formats' records
    # say so by info_dirty_flag (None: not printed).
    if isinstance(d, qcow2.Qcow2Image):
        info["dirty-flag"] = d.dirty
    elif getattr(d, "info_supported", True):
        dirty = getattr(d, "info_dirty_flag", False)
        if dirty is not None:
            info["dirty-flag"] = dirty
    info["actual-size"] = image.allocated
    info["virtual-size"] = d.virtual_size
    if d.cluster_size:
        info["cluster-size"] = d.cluster_size
    if d.encrypted:
        info["encrypted"] = True
    if layer.backing_filename is not None:
        info["backing-filename"] = layer.backing_filename
        info["full-backing-filename"] = layer.full_backing_filename
        if d.backing_format is not None:
            info["backing-filename-format"] = d.backing_format
    # qemu lists no snapshots of a qcow2 with an external data file
    # (qcow2_snapshot_list says ENOTSUP), though it reads and checks the table.
    if image.snapshots and not (isinstance(d, qcow2.Qcow2Image) and d.has_data_file):
        info["snapshots"] = [_snapshot(s) for s in image.snapshots]
    if isinstance(d, qcow2.Qcow2Image):
        info["format-specific"] = {"type": "qcow2", "data": _qcow2_specific(d, image.bitmaps, image.luks)}
    elif image.format == "vmdk":
        info["format-specific"] = {"type": "vmdk", "data": _vmdk_specific(layer.filename, d)}
    elif image.format == "luks":
        info["format-specific"] = {"type": "luks", "data": _luks(getattr(d, "luks"))}  # noqa: B009 (a LuksImage)
    return info


def _vmdk_specific(filename: str, d: Any) -> JSON:
    """``ImageInfoSpecificVmdk``: each extent as an ImageInfo (its file name
    joined to the descriptor's folder, as qemu opens it)."""
    extents = []
    for e in d.extents:
        extent: JSON = {
            "filename": filename if e.filename is None else combine(filename, e.filename),
            "format": e.type or "",
            "virtual-size": e.virtual_size,
        }
        if not e.flat:
            extent["cluster-size"] = e.cluster_size
        if e.compressed:
            extent["compressed"] = True
        extents.append(extent)
    return {"create-type": d.create_type, "cid": d.cid, "parent-cid": d.parent_cid, "extents": extents}


def _snapshot(s: qcow2.Snapshot) -> JSON:
    out: JSON = {
        "id": s.id,
        "name": s.name,
        "vm-state-size": s.vm_state_size,
        "date-sec": s.date_sec,
        "date-nsec": s.date_nsec,
        "vm-clock-sec": s.vm_clock_nsec // 1_000_000_000,
        "vm-clock-nsec": s.vm_clock_nsec % 1_000_000_000,
    }
    if s.icount is not None:
        out["icount"] = s.icount
    return out


def _qcow2_specific(
    d: qcow2.Qcow2Image, bitmaps: tuple[qcow2.Bitmap, ...], luks_header: luks.LuksHeader | None
) -> JSON:
    out: JSON = {"compat": d.compat}
    if d.version >= 3:
        out["lazy-refcounts"] = d.lazy_refcounts
        out["corrupt"] = d.corrupt
        out["extended-l2"] = d.extended_l2
    out["refcount-bits"] = d.refcount_bits
    if d.encryption_format == "aes":
        out["encrypt"] = {"format": "aes"}
    elif luks_header is not None:
        out["encrypt"] = {"format": "luks", **_luks(luks_header)}
    if bitmaps:
        out["bitmaps"] = [{"flags": list(b.flag_names), "name": b.name, "granularity": b.granularity} for b in bitmaps]
    if d.data_file is not None and d.version >= 3:  # qemu shows no data file for version 2
        out["data-file"] = d.data_file
    if d.has_data_file:
        out["data-file-raw"] = d.data_file_raw
    out["compression-type"] = d.compression_type
    return out


def _luks(h: luks.LuksHeader) -> JSON:
    out: JSON = {"cipher-alg": h.cipher_alg, "cipher-mode": h.cipher_mode, "ivgen-alg": h.ivgen_alg}
    if h.ivgen_hash_alg is not None:
        out["ivgen-hash-alg"] = h.ivgen_hash_alg
    out["hash-alg"] = h.hash_alg
    out["payload-offset"] = h.payload_offset
    out["master-key-iters"] = h.master_key_iters
    out["uuid"] = h.uuid
    out["slots"] = [
        {"active": True, "iters": s.iterations, "stripes": s.stripes, "key-offset": s.key_offset}
        if s.active
        else {"active": False, "key-offset": s.key_offset}
        for s in h.slots
    ]
    return out


# -- qemu's JSON writer ------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _qdict_bucket(key: str) -> int:
    """The QDict hash bucket of ``key`` (qobject/qdict.c: tdb_hash % 512).
    (Cached: the same few keys come back for every snapshot and layer.)"""
    raw = key.encode()
    value = (0x238F13AF * len(raw)) & 0xFFFFFFFF
    for i, c in enumerate(raw):
        value = (value + (c << (i * 5 % 24))) & 0xFFFFFFFF
    return ((1103515243 * value + 12345) & 0xFFFFFFFF) % 512


def _qemu_order(d: JSON) -> list[str]:
    """Keys in the order qemu iterates a QDict: by bucket, and within one
    bucket the key inserted last first."""
    keys = list(d)
    return sorted(keys, key=lambda k: (_qdict_bucket(k), -keys.index(k)))


#: Printable ASCII but ``"`` and ``\``: written as it is.
_PLAIN_JSON = re.compile(r"[ !#-\[\]-~]*")


def _string(s: str) -> str:
    if _PLAIN_JSON.fullmatch(s):  # the usual case, without a loop in Python
        return f'"{s}"'
    if not s.isascii():
        s = _qemu_text(s)
    out = ['"']
    for ch in s:
        cp = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif 0x20 <= cp < 0x7F:
            out.append(ch)
        elif cp > 0xFFFF:
            cp -= 0x10000
            out.append(f"\\u{0xD800 + (cp >> 10):04X}\\u{0xDC00 + (cp & 0x3FF):04X}")
        else:
            out.append(f"\\u{cp:04X}")
    out.append('"')
    return "".join(out)


def _qemu_text(s: str) -> str:
    """``s`` as qemu's JSON writer reads its bytes (``mod_utf8_codepoint``,
    util/unicode.c): a sequence it refuses (a stray or missing continuation
    byte, an overlong form, a surrogate, a noncharacter such as U+FFFE, past
    U+10FFFF) is one U+FFFD for all the bytes it takes, and ``C0 80`` is
    U+0000.  (Bytes that are not UTF-8 are lone surrogates in ``s``.)"""
    try:
        raw = s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate not made by decoding
        raw = s.encode("utf-8", "surrogatepass")
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        byte = raw[i]
        i += 1
        if byte < 0x80:
            out.append(chr(byte))
            continue
        cp = -1
        if byte < 0xFE and byte & 0x40:  # a lead byte
            length, mask = 0, 0x80
            while byte & mask:
                length += 1
                mask >>= 1
            cp = byte & (mask - 1)
            for _ in range(1, length):
                if i >= n or raw[i] & 0xC0 != 0x80:
                    cp = -1  # a continuation byte is missing (the byte after is read afresh)
                    break
                cp = cp << 6 | raw[i] & 0x3F
                i += 1
            else:
                if cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF or 0xFDD0 <= cp <= 0xFDEF or cp & 0xFFFE == 0xFFFE:
                    cp = -1
                elif cp < _MIN_CP[length - 2] and not (cp == 0 and length == 2):
                    cp = -1  # overlong (but C0 80 is qemu's NUL)
        out.append(chr(cp) if cp >= 0 else "\ufffd")
    return "".join(out)


#: The least code point of a sequence of 2, 3, ... 6 bytes.
_MIN_CP = (0x80, 0x800, 0x10000, 0x200000, 0x4000000)

_SHORT_ESCAPES = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _write(obj: Any, level: int, out: list[str]) -> None:
    if isinstance(obj, bool):
        out.append("true" if obj else "false")
    elif isinstance(obj, int):
        out.append(str(obj))
    elif isinstance(obj, str):
        out.append(_string(obj))
    elif isinstance(obj, dict):
        _write_items("{", "}", [(k, obj[k]) for k in _qemu_order(obj)], level, out)
    elif isinstance(obj, list):
        _write_items("[", "]", [(None, v) for v in obj], level, out)
    else:  # pragma: no cover - only the types above are built
        raise TypeError(type(obj))


def _write_items(open_: str, close: str, items: list[tuple[str | None, Any]], level: int, out: list[str]) -> None:
    inner = "\n" + "    " * (level + 1)
    out.append(open_)
    for i, (key, value) in enumerate(items):
        out.append(("," if i else "") + inner)
        if key is not None:
            out.append(_string(key) + ": ")
        _write(value, level + 1, out)
    out.append("\n" + "    " * level + close)


def dumps(obj: Any) -> str:
    """``obj`` as qemu-img's pretty JSON (without the final newline)."""
    out: list[str] = []
    _write(obj, 0, out)
    return "".join(out)


# -- qemu-img's human output ------------------------------------------------------

_UNITS = ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")


def size_to_str(n: int) -> str:
    """qemu's size_to_str: three significant digits in binary units, moving
    to the next unit from 1000 of the current one (so 1000 KiB is 0.977 MiB)."""
    _, e = math.frexp(n / (1000.0 / 1024.0))
    i = min(max(0, (e - 1) // 10), len(_UNITS) - 1)
    return f"{n / (1 << (10 * i)):0.3g} {_UNITS[i]}B"


def _dump_value(value: Any, level: int, lines: list[str], label: str) -> None:
    pad = "    " * level
    if isinstance(value, dict):
        lines.append(f"{pad}{label}:")
        for k in _qemu_order(value):
            _dump_value(value[k], level + 1, lines, k.replace("-", " "))
    elif isinstance(value, list):
        lines.append(f"{pad}{label}:")
        for i, v in enumerate(value):
            _dump_value(v, level + 1, lines, f"[{i}]")
    elif isinstance(value, bool):
        lines.append(f"{pad}{label}: {'true' if value else 'false'}")
    elif isinstance(value, str):  # names from the header (bitmaps, the data file) among them
        lines.append(f"{pad}{label}: {name_text(value)}")
    else:
        lines.append(f"{pad}{label}: {value}")


def _snapshot_row(s: JSON | None) -> str:
    if s is None:
        return f"{'ID':<10}{'TAG':<17}{'VM SIZE':>8}{'DATE':>20}{'VM CLOCK':>13}{'ICOUNT':>11}"
    date = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["date-sec"]))
    secs = s["vm-clock-sec"]
    clock = f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}.{s['vm-clock-nsec'] // 1_000_000:03d}"
    icount = str(s["icount"]) if "icount" in s else ""
    size = size_to_str(s["vm-state-size"])
    return f"{_pad(name_text(s['id']), 9)} {_pad(name_text(s['name']), 16)} {size:>8}{date:>20}{clock:>13}{icount:>11}"


def _pad(text: str, width: int) -> str:
    """Left-justify as C's ``%-Ns`` does: counting bytes, not characters."""
    return text + " " * max(0, width - len(text.encode("utf-8", "surrogateescape")))


def human_one(info: JSON) -> str:
    """qemu-img info's text for one image (from :func:`image_info`).  Names
    that are not plain printable text (control characters, newlines, bytes
    that are not UTF-8) are quoted and escaped, where qemu-img prints them raw."""
    lines = [
        f"image: {name_text(info['filename'])}",
        f"file format: {info['format']}",
        f"virtual size: {size_to_str(info['virtual-size'])} ({info['virtual-size']} bytes)",
        f"disk size: {size_to_str(info['actual-size'])}",
    ]
    if info.get("encrypted"):
        lines.append("encrypted: yes")
    if "cluster-size" in info:
        lines.append(f"cluster_size: {info['cluster-size']}")
    if info.get("dirty-flag"):
        lines.append("cleanly shut down: no")
    if "backing-filename" in info:
        line = f"backing file: {name_text(info['backing-filename'])}"
        if info["full-backing-filename"] != info["backing-filename"]:
            line += f" (actual path: {name_text(info['full-backing-filename'])})"
        lines.append(line)
        if "backing-filename-format" in info:
            lines.append(f"backing file format: {name_text(info['backing-filename-format'])}")
    if "snapshots" in info:
        lines.append("Snapshot list:")
        lines.append(_snapshot_row(None))
        lines.extend(_snapshot_row(s) for s in info["snapshots"])
    if "format-specific" in info:
        lines.append("Format specific information:")
        data = info["format-specific"]["data"]
        for k in _qemu_order(data):
            _dump_value(data[k], 1, lines, k.replace("-", " "))
    return "\n".join(lines) + "\n"


def human(infos: Iterable[JSON]) -> str:
    """qemu-img info's text for a chain: the images with a blank line between."""
    return "\n".join(human_one(i) for i in infos)
