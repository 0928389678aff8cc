"""The audit report as text for people, JSON, JSON lines, and the backing
graph as a tree of text or as Graphviz DOT.

Names come from file systems and headers: any bytes.  In the text, a name
that is not plain printable text is quoted and escaped (``errors.shown``),
so that every line is the emitter's.  In JSON (always valid UTF-8), a name
that is not UTF-8 is given with U+FFFD for its undecodable bytes, and its
exact bytes in hexadecimal in a field of the same name with ``_hex`` added
(for a list of names, a list of the same length).  The JSON is described by
the JSON Schemas in ``imgchain/schema/``.  In DOT, a node's id is its path,
escaped so that any bytes make one valid, distinct quoted id (see
:func:`dot_id`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from imgchain.audit import AuditReport, ImageEntry
from imgchain.errors import plain, quoted, shown
from imgchain.policy import Finding, Severity

__all__ = [
    "GRAPHS",
    "dot",
    "dot_id",
    "dot_lines",
    "finding_dict",
    "human",
    "human_lines",
    "image_dict",
    "json_chunks",
    "json_lines",
    "summary_lines",
    "to_json",
]

#: The drawings of the backing graph that ``--graph`` offers.
GRAPHS = ("tree", "dot")


def finding_dict(f: Finding) -> dict[str, Any]:
    return {
        "code": f.code,
        "severity": f.severity.label,
        "image": f.image,
        "chain": list(f.chain),
        "message": f.message,
        **f.details,
    }


def image_dict(e: ImageEntry) -> dict[str, Any]:
    worst = e.worst
    return {
        "path": e.path,
        "named": e.named,
        "format": e.format,
        "format_source": e.format_source,
        "probed_format": e.probed_format,
        "virtual_size": e.virtual_size,
        "backing": e.backing,
        "backing_format": e.backing_format,
        "dependents": e.dependents,
        "worst": None if worst is None else worst.label,
    }


def _valid(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with each string that holds bytes that are not UTF-8 (lone
    surrogates, from ``surrogateescape``) replaced by its text with U+FFFD,
    and followed by ``<key>_hex``: its bytes in hexadecimal."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, str):
            out[key] = value
            if not _utf8(value):
                out[key] = _replaced(value)
                out[key + "_hex"] = _raw(value).hex()
        elif isinstance(value, list):
            items = [_valid(v) if isinstance(v, dict) else v for v in value]
            if any(isinstance(v, str) and not _utf8(v) for v in items):
                out[key] = [_replaced(v) if isinstance(v, str) else v for v in items]
                out[key + "_hex"] = [_raw(v).hex() if isinstance(v, str) else None for v in items]
            else:
                out[key] = items
        elif isinstance(value, dict):
            out[key] = _valid(value)
        else:
            out[key] = value
    return out


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _raw(text: str) -> bytes:
    """The bytes of a name (as ``os.fsencode`` gives them)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no decoding made
        return text.encode("utf-8", "surrogatepass")


def _replaced(text: str) -> str:
    return _raw(text).decode("utf-8", "replace")


def _encoder() -> Callable[[Any], str]:
    """``json.dumps`` with its defaults (compact, ASCII), as one C encoder
    made once: ``json.dumps`` makes a new one for every call, which costs
    as much as encoding an image's few fields."""
    from json import encoder

    c_make_encoder = getattr(encoder, "c_make_encoder", None)
    try:  # (the arguments json.JSONEncoder.iterencode gives it, for json.dumps's defaults)
        make = c_make_encoder(  # type: ignore[misc]
            None, json.JSONEncoder().default, encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True
        )
    except TypeError:  # (a Python without the C accelerator, which is None, or with another one)
        return json.dumps
    return lambda obj: "".join(make(obj, 0))


_encode = _encoder()


def _dumps(obj: dict[str, Any]) -> str:
    """JSON that is valid UTF-8 (ASCII, in fact) whatever the names in ``obj``."""
    text = _encode(obj)
    if "\\ud" in text:  # a lone surrogate, or (rarely, and harmlessly) a pair for a character past U+FFFF
        text = _encode(_valid(obj))
    return text


def json_lines(report: AuditReport) -> Iterator[str]:
    """One JSON object per image, its findings in it, one per line; then one
    line for each other place with findings (a folder that could not be read,
    a file that could not be read as an image)."""
    by_image: dict[str, list[Finding]] = {}
    for f in report.findings:
        by_image.setdefault(f.image, []).append(f)
    for entry in report.images:
        found = by_image.pop(entry.path, [])
        yield _dumps({**image_dict(entry), "findings": [finding_dict(f) for f in found]})
    for path, found in by_image.items():
        yield _dumps({"path": path, "findings": [finding_dict(f) for f in found]})


def json_chunks(report: AuditReport) -> Iterator[str]:
    """``{"images": [...], "findings": [...]}`` in pieces, an image or a
    finding at a time, so that a large store is never one string in memory.
    Each image and each finding is one line of compact JSON (so that the C
    encoder writes it: indentation would take Python's own, several times
    slower; pipe through ``python3 -m json.tool`` to read it indented)."""

    def items(objects: Iterator[dict[str, Any]]) -> Iterator[str]:
        for i, obj in enumerate(objects):
            yield ("," if i else "") + "\n    " + _dumps(obj)

    yield '{\n  "images": ['
    yield from items(image_dict(e) for e in report.images)
    yield '\n  ],\n  "findings": ['
    yield from items(finding_dict(f) for f in report.findings)
    yield "\n  ]\n}\n"


def to_json(report: AuditReport) -> str:
    return "".join(json_chunks(report))


_BROKEN = {
    "backing-missing": "its backing file is missing",
    "backing-loop": "its chain loops",
    "backing-network": "its backing file is a network source",
    "backing-outside-root": "its backing file is outside every root",
    "backing-not-regular": "its backing file is not a regular file",
    "backing-name-invalid": "its backing name cannot be parsed",
}


#: The deepest level of the graph drawn with its own indentation.  Below
#: it, lines keep the indentation of that level and say their level
#: (``[41] top.qcow2``: an overlay of the nearest line above at level 40), so
#: that the output grows with the number of images, not with its square.
_DRAWN_LEVELS = 16


def _tree(report: AuditReport) -> Iterator[str]:
    """The backing graph: every base with its overlays beneath it; overlays
    whose base is missing or elsewhere at the top level, with why; and last,
    images on a loop, which have no base to hang from."""
    why: dict[str, str] = {}
    for f in report.findings:
        if f.code in _BROKEN:
            why.setdefault(f.image, _BROKEN[f.code])
    seen: set[int] = set()  # id() of the entries drawn

    def draw(root: ImageEntry, note: str) -> Iterator[str]:
        # (entry, prefix of its line, prefix of its children's lines, level); a stack, as chains may be deep
        stack: list[tuple[ImageEntry, str, str, int]] = [(root, "", "", 0)]
        while stack:
            entry, line_prefix, child_prefix, level = stack.pop()
            if level > _DRAWN_LEVELS:  # the prefix stops growing: the level says where the line hangs
                line_prefix += f"[{level}] "
            suffix = ""
            if entry is root and entry.backing is not None:
                reason = (
                    note
                    or why.get(entry.path)
                    or (
                        "its chain goes on past --max-depth"
                        if entry.truncated
                        else "its backing file could not be read"
                    )
                )
                suffix = f"  ({reason}: {quoted(entry.backing)})"
            if id(entry) in seen:
                yield f"  {line_prefix}{shown(entry.path)}  (again: the graph loops here)"
                continue
            seen.add(id(entry))
            yield f"  {line_prefix}{shown(entry.path)}{suffix}"
            children = entry.dependent_entries
            for i, child in reversed(list(enumerate(children))):
                branch, under = ("└─ ", "   ") if i == len(children) - 1 else ("├─ ", "│  ")
                under_child = child_prefix + under if level < _DRAWN_LEVELS else child_prefix
                stack.append((child, child_prefix + branch, under_child, level + 1))

    for entry in report.images:
        if not entry.is_overlay:
            yield from draw(entry, "")
    for entry in report.images:  # a loop has no base to hang from: start at one of its images
        if entry.on_loop and id(entry) not in seen:
            yield from draw(entry, "on a loop")
    for entry in report.images:  # (anything left, so that every image is drawn)
        if id(entry) not in seen:
            yield from draw(entry, "")


def _chain(chain: tuple[str, ...]) -> str:
    """A finding's chain, with the middle of a very long one left out."""
    if len(chain) <= 2 * _CHAIN_ENDS + 1:
        return " -> ".join(shown(c) for c in chain)
    left_out = len(chain) - 2 * _CHAIN_ENDS
    return " -> ".join(
        [*(shown(c) for c in chain[:_CHAIN_ENDS]), f"({left_out} more)", *(shown(c) for c in chain[-_CHAIN_ENDS:])]
    )


#: The layers shown at each end of a long chain.
_CHAIN_ENDS = 4


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def human(report: AuditReport, graph: str | None = None) -> str:
    return "".join(line + "\n" for line in human_lines(report, graph))


def human_lines(report: AuditReport, graph: str | None = None) -> Iterator[str]:
    """The report for people, a line at a time: findings by image, worst
    first; with ``graph="tree"``, the backing graph drawn as a tree; then a
    summary of a few lines (:func:`summary_lines`)."""
    lines: list[str] = []
    by_image: dict[str, list[Finding]] = {}
    for f in report.findings:
        by_image.setdefault(f.image, []).append(f)
    order = sorted(by_image, key=lambda image: (-max(f.severity for f in by_image[image]), image))
    for image in order:
        found = by_image[image]
        lines.append(f"{max(f.severity for f in found).label.upper():8} {shown(image)}")
        for f in sorted(found, key=lambda f: (-f.severity, f.code)):
            lines.append(f"  {f.severity.label:8} {f.code}: {f.message}")
            if len(f.chain) > 1:
                lines.append(f"  {'':8} chain: {_chain(f.chain)}")
        lines.append("")
    yield from lines
    if graph == "tree":
        yield f"Backing graph ({_count(len(report.images), 'image')}):"
        yield from _tree(report)
        yield ""
    elif graph is not None:
        raise ValueError(f"no such text drawing of the graph: {graph!r}")
    yield from summary_lines(report)


#: The images named in the summary's line of images that nothing depends on.
_SUMMARY_NAMES = 3


def summary_lines(report: AuditReport) -> Iterator[str]:
    """At most four lines, whatever the size of the store: the images by
    format; the chains (an image that nothing depends on, with its backing
    files), the backing links and the deepest chain; the images that
    nothing depends on (a few named); the findings by severity."""
    images = report.images
    formats = Counter(e.format or "unreadable" for e in images)
    by_count = sorted(formats.items(), key=lambda item: (-item[1], item[0]))
    yield "formats: " + (", ".join(f"{n} {fmt}" for fmt, n in by_count) or "none")
    links = sum(1 for e in images if e.backing_name is not None)
    tops = [e for e in images if not e.dependents]
    if links:
        layers, top = _deepest(report)
        chains = sum(1 for e in tops if e.backing_name is not None)
        deepest = f"; the deepest has {_count(layers, 'layer')}: {shown(top.path)}" if top is not None else ""
        yield f"chains: {chains} ({_count(links, 'backing link')}){deepest}"
        named = ", ".join(shown(e.path) for e in tops[:_SUMMARY_NAMES])
        more = f" and {len(tops) - _SUMMARY_NAMES} more" if len(tops) > _SUMMARY_NAMES else ""
        yield f"nothing depends on {_count(len(tops), 'image')}" + (f": {named}{more}" if tops else "")
    elif images:
        yield "chains: none (no image has a backing file)"
    counts = Counter(f.severity for f in report.findings)
    notes = f", {_count(counts[Severity.INFO], 'note')}" if counts[Severity.INFO] else ""
    yield (
        f"{_count(len(images), 'image')}; {_count(counts[Severity.ERROR], 'error')}, "
        f"{_count(counts[Severity.WARNING], 'warning')}{notes}"
    )


def _deepest(report: AuditReport) -> tuple[int, ImageEntry | None]:
    """The most layers in a chain of the report (images of the report only:
    a missing base is no layer), and the top of the first such chain.  Each
    image is visited once, from the images that are no overlay of another
    (images on a loop have no such base, and are left out)."""
    best, top = 0, None
    for root in report.images:
        if root.is_overlay:
            continue
        stack = [(root, 1)]
        while stack:
            entry, layers = stack.pop()
            children = entry.dependent_entries
            if not children and (layers > best or (layers == best and top is not None and entry.path < top.path)):
                best, top = layers, entry
            stack.extend((child, layers + 1) for child in children)
    return best, top


# -- Graphviz DOT --------------------------------------------------------------------------------


def dot_id(name: str) -> str:
    """``name`` as a quoted DOT id: one line of printable text, distinct for
    distinct names.  DOT keeps every backslash of a quoted string but the
    one before a quote, so: a quote is written ``\\"``; and a backslash,
    and each character that is not plain printable text (a control
    character, a newline, a format character, a byte that is not UTF-8), is
    written as its UTF-8 bytes (or the byte itself), ``\\xNN`` each.  A
    backslash in an id therefore always starts ``\\xNN``, and the id can be
    read back to the exact bytes; and no backslash ever comes before the
    closing quote."""
    if plain(name) and '"' not in name and "\\" not in name:
        return f'"{name}"'
    out = []
    for c in name:
        if c == '"':
            out.append('\\"')
        elif c != "\\" and plain(c):
            out.append(c)
        else:
            out.append("".join(f"\\x{b:02x}" for b in _raw(c)))
    return '"' + "".join(out) + '"'


def _dot_text(lines: list[str]) -> str:
    """Text for a DOT label or tooltip (Graphviz's escString: ``\\n`` ends a
    line, ``\\\\`` is a backslash), each line already printable text."""
    return '"' + "\\n".join(line.replace("\\", "\\\\").replace('"', '\\"') for line in lines) + '"'


#: Fill and border colours of an image's node by its worst finding.
_DOT_COLOURS = {
    Severity.ERROR: 'fillcolor="#f8d0d0", color="#b00020", penwidth=2',
    Severity.WARNING: 'fillcolor="#fff0b3", color="#b8860b", penwidth=2',
    Severity.INFO: 'fillcolor="#dde8ff", color="#3060c0"',
}

#: The nodes that stand for what a backing name names where it is no image
#: of the report: (the finding on the overlay that says why, the first
#: line of the node's label, its shape and style).
_DOT_ENDS = {
    "backing-network": ("network source", 'shape=hexagon, style=dashed, color="#3060c0"'),
    "backing-missing": ("missing", 'shape=box, style=dashed, color="#b00020"'),
    "backing-outside-root": ("outside every root, not opened", 'shape=octagon, style=dashed, color="#b00020"'),
    "backing-not-regular": ("not a regular file, not opened", 'shape=octagon, style=dashed, color="#b00020"'),
    "backing-name-invalid": ("a name that cannot be parsed", 'shape=octagon, style=dashed, color="#b00020"'),
    "backing-loop": ("not opened (its links loop)", 'shape=octagon, style=dashed, color="#b00020"'),
    "not-standalone": ("not followed (--standalone)", "shape=octagon, style=dotted"),
}
_DOT_NOT_READ = ("not read", "shape=octagon, style=dotted")
_DOT_TOO_DEEP = ("not read (past --max-depth)", "shape=octagon, style=dotted")


def dot(report: AuditReport) -> str:
    return "".join(line + "\n" for line in dot_lines(report))


def dot_lines(report: AuditReport) -> Iterator[str]:
    """The backing graph in Graphviz's DOT, a line at a time (``dot -Tsvg``
    draws it).  Every image is a node whose id is its path, labelled with
    its path and format, filled by its worst finding (red for an error,
    yellow for a warning; its findings in the tooltip).  Every backing link
    is one edge, from the overlay to its base.  Where the base is no image
    of the report, the edge goes to a node of its own kind, one per name:
    a network source (a dashed hexagon), a missing file (a dashed box), a
    file not opened (outside the roots, not a regular file, a name that
    cannot be parsed: a dashed octagon), or not read (past --max-depth,
    not followed under --standalone: a dotted octagon).  A place with
    findings that is no image (a folder or file that could not be read)
    is a note-shaped node."""
    by_image: dict[str, list[Finding]] = {}
    for f in report.findings:
        by_image.setdefault(f.image, []).append(f)
    paths = {e.path for e in report.images}
    counts = Counter(f.severity for f in report.findings)
    title = (
        f"imgchain audit: {_count(len(report.images), 'image')}; {_count(counts[Severity.ERROR], 'error')}, "
        f"{_count(counts[Severity.WARNING], 'warning')}"
    )
    yield "digraph imgchain {"
    yield f"  graph [label={_dot_text([title])}, labelloc=t];"
    yield '  node [shape=box, style="rounded,filled", fillcolor=white];'
    ends: dict[tuple[str, str], str] = {}  # (label, name) -> the id of its node
    used: set[str] = set(paths)
    for entry in report.images:
        found = by_image.pop(entry.path, [])
        yield f"  {dot_id(entry.path)} [{_dot_node(shown(entry.path), entry.format or 'unreadable', found)}];"
        for overlay in entry.dependent_entries:
            yield f"  {dot_id(overlay.path)} -> {dot_id(entry.path)};"
        if entry.backing_name is not None and not entry.is_overlay:
            name = entry.backing or entry.backing_name
            label, style = _dot_end(entry, name, found)
            key = (label, name)
            node = ends.get(key)
            if node is None:
                node = name
                while node in used:  # (a name that is also the path of an image, or of another kind's node)
                    node += f" ({label})"
                used.add(node)
                ends[key] = node
                yield f"  {dot_id(node)} [{style}, label={_dot_text([label, shown(name)])}];"
            yield f"  {dot_id(entry.path)} -> {dot_id(node)};"
    for place, found in by_image.items():  # (findings on a place that is no image: a folder, an unreadable file)
        if place in used:
            continue
        used.add(place)
        yield f"  {dot_id(place)} [shape=note, {_dot_node(shown(place), 'not an image', found)}];"
    yield "}"


def _dot_node(name: str, what: str, found: list[Finding]) -> str:
    if not found:
        return f"label={_dot_text([name, what])}"
    worst = max(f.severity for f in found)
    tips = [f"{f.severity.label}: {f.code}" for f in sorted(found, key=lambda f: (-f.severity, f.code))]
    return f"label={_dot_text([name, what])}, {_DOT_COLOURS[worst]}, tooltip={_dot_text(tips)}"


def _dot_end(entry: ImageEntry, name: str, found: list[Finding]) -> tuple[str, str]:
    """The label and style of the node for ``entry``'s backing file, which
    is no image of the report: by the finding on ``entry`` about it."""
    about = [f for f in found if f.code in _DOT_ENDS]
    for f in about:  # the finding about this very name first (not, say, about a data file)
        if f.details.get("target") in (name, entry.backing_name):
            return _DOT_ENDS[f.code]
    if about:
        return _DOT_ENDS[about[0].code]
    return _DOT_TOO_DEEP if entry.truncated else _DOT_NOT_READ
