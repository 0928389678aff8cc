"""vmdk's descriptor reader against a plain reference.

``formats.vmdk`` reads descriptor text with a few searches over the whole
text, and reads only as far as the text's NUL.  The reference here is the
obvious reading of qemu's rules: a loop over the lines, qemu's ``sscanf``
emulated at each line's start (``vmdk.scan_extent_line``), and the
``DESC_SIZE`` area read whole for CID, parentCID and parentFileNameHint.
Both must agree on every input: the same record, or the same error.
"""

from __future__ import annotations

import re
import struct
import sys

import craft
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgchain.errors import FormatError
from imgchain.formats import NeedBytes, Reference, Window, vmdk

# -- the reference ------------------------------------------------------------------------

_VERSION = re.compile(rb"[ \t]*version[ \t]*=[ \t]*(\d{1,9})[ \t]*\r?$")
_DDB = re.compile(rb'[ \t]*(ddb\.[^\s="]+)[ \t]*=[ \t]*"([^"\r\n]*)"')
_NON_WS = re.compile(rb"[^ \t\n\v\f\r]")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def reference_parse(
    raw: bytes, strict: bool = True, offset: int = 0, sink: list[vmdk.ExtentLine] | None = None
) -> vmdk.Descriptor:
    """``vmdk.parse_descriptor``, one line at a time."""
    text = vmdk._c_text(raw[: vmdk.DESC_READ_CAP])
    create_type = vmdk._create_type(text, strict, offset)
    extents: list[vmdk.ExtentLine] = [] if sink is None else sink
    ddb, version, p = [], None, -1
    starts = [0] + [i + 1 for i, c in enumerate(text) if c == 0x0A and i + 1 < len(text)] if text else []
    for number, start in enumerate(starts, 1):
        end = text.find(b"\n", start)
        line = text[start:] if end < 0 else text[start:end]
        if version is None and (m := _VERSION.match(line)):
            version = int(m.group(1))
        if m := _DDB.match(line):
            ddb.append((_text(m.group(1)), _text(m.group(2))))
        if start > p:  # (sscanf skips blank space: each run is searched once, each scan made once)
            m = _NON_WS.search(text, start)
            p = len(text) if m is None else m.start()
            s = vmdk.scan_extent_line(text, p)
        if s.matches < 4:
            continue
        access, kind, name = _text(s.access), _text(s.type), _text(s.filename)
        if access != "RW":
            entry = vmdk.ExtentLine(number, access, s.sectors, kind, name, s.offset, used=False)
        else:
            if kind == "FLAT":
                ok, flat_offset = s.matches == 5 and s.offset is not None and s.offset >= 0, s.offset
            else:
                ok, flat_offset = s.matches == 4, (0 if kind == "VMFS" else None)
            if not ok:
                if strict:
                    shown = _text(line.rstrip(b"\r"))
                    raise FormatError(
                        "vmdk",
                        f"line {number}: invalid extent line {shown!r}",
                        field="extent line",
                        offset=offset + start,
                    )
                continue
            used = s.sectors > 0 and kind in vmdk.EXTENT_TYPES
            entry = vmdk.ExtentLine(number, access, s.sectors, kind, name, flat_offset, used)
        if len(extents) == vmdk.MAX_EXTENTS:
            raise FormatError(
                "vmdk",
                f"line {number}: more than {vmdk.MAX_EXTENTS} extent lines",
                field="extent line",
                offset=offset + start,
            )
        extents.append(entry)
    return vmdk.Descriptor(version, create_type, tuple(extents), tuple(ddb), len(text))


def reference_cid(area: bytes, key: bytes) -> int | None:
    """qemu's ``vmdk_read_cid`` on the whole area."""
    full = area[: vmdk.DESC_SIZE - 1]
    at = vmdk._c_text(full).find(key)
    if at < 0:
        return None
    t = vmdk._c_text(full[at + len(key) + 1 :])
    m = re.match(rb"[ \t\n\v\f\r]*([+-]?)(0[xX](?=[0-9a-fA-F]))?([0-9a-fA-F]*)", t)
    assert m is not None
    if not m[3]:
        return None
    digits = m[3].lstrip(b"0") or b"0"
    value = vmdk.U64 if len(digits) > 16 else int(digits, 16)
    return (-value & vmdk.U64 if m[1] == b"-" else value) & vmdk.U32


def reference_hint(area: bytes) -> str | None:
    """qemu's ``vmdk_parent_open`` on the whole area (its buffer has two NULs past it)."""
    buf = area[: vmdk.DESC_SIZE] + b"\0\0"
    at = vmdk._c_text(buf).find(b"parentFileNameHint")
    if at < 0:
        return None
    start = at + len(b"parentFileNameHint") + 2
    stop = buf.find(b"\0", start)
    close = buf.find(b'"', start, stop if stop >= 0 else None)
    if close < 0 or close - start > vmdk.MAX_PARENT_HINT:
        raise FormatError("vmdk", "bad parentFileNameHint")
    return _text(buf[start:close])


def outcome(f, *args, **kwargs):  # type: ignore[no-untyped-def]
    try:
        return f(*args, **kwargs)
    except FormatError as exc:
        return (type(exc), str(exc), exc.field, exc.offset)


# -- inputs ---------------------------------------------------------------------------------

_BLANK = st.sampled_from([b" ", b"\t", b"  ", b"\n", b"\r\n", b"\n\n", b" \n ", b"\v", b"\f", b"\r", b""])
_EXTENT_PARTS = (
    st.sampled_from([b"", b" ", b"\n", b"\n\n\n", b"  \n \r\n"]),
    st.sampled_from([b"RW", b"RDONLY", b"NOACCESS", b"rw", b"RWRWRWRWRWRW", b"#", b"ddb.abcdef"]),
    _BLANK,
    st.sampled_from([b"1", b"2048", b"0", b"-1", b"+5", b"0009", b"99999999999999999999999", b"x", b""]),
    _BLANK,
    st.sampled_from([b"FLAT", b"SPARSE", b"VMFS", b"VMFSSPARSE", b"SESPARSE", b"ZERO", b'FLAT"x"', b"F"]),
    _BLANK,
    st.sampled_from([b'"', b""]),
    st.one_of(st.sampled_from([b"a.raw", b"x y", b"", b"a" * 520, b'a"b']), st.binary(max_size=8)),
    st.sampled_from([b'"', b""]),
    st.sampled_from([b" ", b"", b"\n"]),
    st.sampled_from([b"0", b"7", b"-3", b"", b"x", b"99999999999999999999"]),
)
_OTHER_LINES = st.sampled_from(
    [
        b"# Extent description",
        b"",
        b"   ",
        b'ddb.adapterType = "ide"',
        b'  ddb.geometry.heads = "16"',
        b'ddb.x="\xff\xc3\xa9\x85"',
        b'ddb.k = "v',
        b"version=1",
        b" version = 3 \r",
        b"version=2x",
        b'parentFileNameHint="../base.vmdk"',
        b"CID=fffffffe",
        b"parentCID=ffffffff",
        b"CID=-0x7",
        b"CID=00000000000000000001f",
        b"CID=11111111111111111",
    ]
)
_HEADS = st.sampled_from(
    [
        b'version=1\nCID=1234abcd\nparentCID=ffffffff\ncreateType="monolithicFlat"\n',
        b'# Disk DescriptorFile\r\nversion=1\r\nCID=1\r\nparentCID=ffffffff\r\ncreateType="vmfs"\r\n',
        b'createType="twoGbMaxExtentFlat"\nparentCID=0x12\n',
        b'createType="monolithicSparse"\n',
        b'CID=-11111111111111111\nparentCID=\t-0000000000000000000ff\ncreateType="vmfs"\n',  # strtoul clamps, -
        b"",
    ]
)
#: How a text may end: a key at its very end makes qemu read past the NUL.
_ENDS = st.sampled_from(
    [b"", b"\n", b"CID", b"parentCID", b"CID=", b"parentFileNameHint", b"parentFileNameHint=", b'parentFileNameHint="x']
)
#: What may follow the NUL.
_AFTER = st.sampled_from([b"", b"\0=12ab\0", b'\0"abc"\0', b"\0 -0x7\0", b"\0" + b"y" * 20])


@st.composite
def descriptors(draw: st.DrawFn, long: bool = True) -> bytes:
    """Descriptor-like text; ``long``: some are longer than the probe's first read, or than DESC_SIZE."""
    lines = draw(st.lists(st.one_of(st.tuples(*_EXTENT_PARTS).map(b"".join), _OTHER_LINES), max_size=20))
    filler = draw(st.sampled_from([0, 0, 0, 5000, 12000] if long else [0]))
    return draw(_HEADS) + b"\n".join(lines) + (b"\n#" + b"p" * filler if filler else b"") + draw(_ENDS)


_SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- the descriptor text ----------------------------------------------------------------------------


@_SETTINGS
@given(text=descriptors(), strict=st.booleans())
def test_parse_descriptor_is_the_line_by_line_reading(text, strict):
    ours: list[vmdk.ExtentLine] = []
    theirs: list[vmdk.ExtentLine] = []
    assert outcome(vmdk.parse_descriptor, text, strict=strict, offset=512, sink=ours) == outcome(
        reference_parse, text, strict, 512, theirs
    )
    assert ours == theirs  # the lines before a refusal too


@pytest.mark.parametrize(
    "text",
    [
        b'\n\n  \n\t\nRW 1 FLAT "a" 0\n',  # a blank run from the first line: each line reads the extent line
        b'version=1\n \n\r\n RW\n2048\nFLAT\n"f"\n9\nRW 1 VMFS "b"',  # sscanf across lines, then a line inside
        b'RW 1 FLAT "a"\n5 2 SPARSE "b"\n',  # the offset on the next line, which is itself an extent line
        b'RW 1 FLAT "a" 0\n\n\n',
        b'RW 1 FLAT "' + b"x" * 600 + b'" 0\n',
        b'createType="vmfs"\n' + b"\n" * 70000 + b'RW 1 FLAT "f" 0\n',  # more than MAX_EXTENTS lines
    ],
)
@pytest.mark.parametrize("strict", [True, False])
def test_parse_descriptor_edges(text, strict):
    assert outcome(vmdk.parse_descriptor, text, strict=strict) == outcome(reference_parse, text, strict)


_PATTERNS = [vmdk._EXTENT_LINE_PORTABLE]
if sys.version_info >= (3, 11):
    _PATTERNS.append(re.compile(vmdk._EXTENT_LINE_POSSESSIVE))


@_SETTINGS
@given(text=descriptors(long=False))
def test_extent_line_pattern_is_qemus_sscanf(text):
    """At every byte that is not blank, the pattern matches exactly where
    ``sscanf`` makes four conversions or more, with the same fields."""
    text = vmdk._c_text(text)
    for p in range(len(text)):
        if text[p] in b" \t\n\v\f\r":
            continue
        s = vmdk.scan_extent_line(text, p)
        want = None if s.matches < 4 else (s.access, s.sectors, s.type, s.filename, s.offset)
        # (the pattern starts at a line's "\n": put one just before p)
        probe = b"\n" + text[p:]
        for pattern in _PATTERNS:
            m = pattern.match(probe)
            got = (
                None if m is None else (m[1], vmdk._long(m[2]), m[3], m[4], None if m[5] is None else vmdk._long(m[5]))
            )
            assert got == want, (pattern.pattern, text[p:])


# -- CID, parentCID, parentFileNameHint -----------------------------------------------------------


@_SETTINGS
@given(text=descriptors(), after=_AFTER, pad=st.sampled_from([0, 0, 11000]))
def test_area_fields_are_read_as_from_the_whole_area(text, after, pad):
    data = vmdk._c_text(text) + after + bytes(pad)
    area = (data + bytes(vmdk.DESC_SIZE))[: vmdk.DESC_SIZE]
    try:
        want: object = (reference_hint(area), reference_cid(area, b"CID"), reference_cid(area, b"parentCID"))
    except FormatError:
        want = FormatError
    try:
        got: object = vmdk._area_fields(Window(data), 0)
    except FormatError:
        got = FormatError
    assert got == want


# -- what is read -------------------------------------------------------------------------------------


def sparse_file(text: bytes, size: int = 65536, desc_size: int = 20) -> bytes:
    """A monolithicSparse-like file: its header, ``text`` at sector 1."""
    head = struct.pack("<4sIIQQQQIQQQ", b"KDMV", 1, 0, 2048, 128, 1, desc_size, 512, 0, 21, 1) + b"\0\n \r\n\0\0"
    data = bytearray(size)
    data[: len(head)] = head
    data[512 : 512 + len(text)] = text[: size - 512]
    return bytes(data)


def read_as_the_probe_does(data: bytes, first: int = 4096) -> tuple[object, int, int]:
    """decode through a window of the first bytes, reading what NeedBytes asks
    for (at least 64 KiB): the outcome, the passes and the bytes read."""
    win = Window(data[:first], len(data))
    read, passes = min(first, len(data)), 0
    while True:
        passes += 1
        try:
            return outcome(vmdk.decode, win), passes, read
        except NeedBytes as need:
            chunk = data[need.offset : need.offset + max(need.length, 65536)]
            win.add(need.offset, chunk)
            read += len(chunk)


SPARSE_TEXT = (
    b'# Disk DescriptorFile\nversion=1\nCID=897bdea\nparentCID=ffffffff\ncreateType="monolithicSparse"\n\n'
    b'# Extent description\nRW 32768 SPARSE "base.vmdk"\n\n# The Disk Data Base\n#DDB\n\n'
    b'ddb.virtualHWVersion = "4"\nddb.adapterType = "ide"\n'
)


def test_a_sparse_file_decodes_from_its_first_read():
    """The descriptor text ends (at its NUL) inside the probe's first 4 KiB:
    nothing more is read, and decoding takes one pass."""
    data = sparse_file(SPARSE_TEXT)
    image, passes, read = read_as_the_probe_does(data)
    assert image == vmdk.decode(data)
    assert (passes, read) == (1, 4096)
    assert isinstance(image, vmdk.VmdkImage) and image.cid == 0x897BDEA and image.embedded is not None


def test_a_descriptor_file_is_read_once():
    text = SPARSE_TEXT.replace(b"monolithicSparse", b"monolithicFlat")
    text = text.replace(b'SPARSE "base.vmdk"', b'FLAT "base-flat.vmdk" 0')
    win = craft.RecordingWindow(text)
    image = vmdk.decode(win)
    assert [(e.filename, e.flat_offset) for e in image.extents] == [("base-flat.vmdk", 0)]
    assert win.furthest == len(text)


@pytest.mark.parametrize(
    "text",
    [
        SPARSE_TEXT + b"#" + b"p" * 12000,  # no NUL inside desc_size sectors: cut there, the CID area read whole
        SPARSE_TEXT + b"#" + b"p" * 5000,  # the NUL past the first read
        SPARSE_TEXT[:-1] + b"CID",  # a key at the end: the CID area is read past the NUL
        SPARSE_TEXT + b"parentFileNameHint",
    ],
)
@pytest.mark.parametrize("first", [512, 4096])
def test_long_or_odd_texts_read_through_a_window_decode_alike(text, first):
    data = sparse_file(text)
    image, passes, read = read_as_the_probe_does(data, first)
    assert image == outcome(vmdk.decode, data)
    assert passes <= 3 and read <= len(data) + 512


def test_files_opened_after_a_refusal_uses_the_lines_decode_read():
    text = b'version=1\ncreateType="vmfs"\nRW 8 FLAT "a" 0\nRW 8 FLAT "b"\n'
    win = Window(text)
    with pytest.raises(FormatError, match="line 4"):
        vmdk.decode(win)
    assert vmdk.files_opened(win) == vmdk.files_opened(text) == (Reference("extent", "a", "image", "raw"),)
    no_cid = b'version=1\ncreateType="vmfs"\nRW 8 FLAT "a" 0\nRW 8 VMFS "b"\n'
    win = Window(no_cid)
    with pytest.raises(FormatError, match="no CID"):
        vmdk.decode(win)
    assert [r.name for r in vmdk.files_opened(win)] == ["a", "b"]
