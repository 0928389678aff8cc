"""The audit report as text for people, JSON, and JSON lines.

Names come from file systems and headers: any bytes.  In the text, a name
that is not plain printable text is quoted and escaped (``errors.shown``),
so that every line is the emitter's.  In JSON (always valid UTF-8), a name
that is not UTF-8 is given with U+FFFD for its undecodable bytes, and its
exact bytes in hexadecimal in a field of the same name with ``_hex`` added
(for a list of names, a list of the same length).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from imgchain.audit import AuditReport, ImageEntry
from imgchain.errors import quoted, shown
from imgchain.policy import Finding, Severity

__all__ = ["finding_dict", "human", "human_lines", "image_dict", "json_chunks", "json_lines", "to_json"]


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
        "worst": e.worst.label if e.worst is not None else None,
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


def _dumps(obj: dict[str, Any], **options: Any) -> str:
    """JSON that is valid UTF-8 (ASCII, in fact) whatever the names in ``obj``."""
    text = json.dumps(obj, ensure_ascii=True, **options)
    if "\\ud" in text:  # a lone surrogate, or (rarely, and harmlessly) a pair for a character past U+FFFF
        text = json.dumps(_valid(obj), ensure_ascii=True, **options)
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
    finding at a time, so that a large store is never one string in memory."""

    def items(objects: Iterator[dict[str, Any]]) -> Iterator[str]:
        for i, obj in enumerate(objects):
            text = _dumps(obj, indent=2).replace("\n", "\n    ")
            yield ("," if i else "") + "\n    " + text

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


def human(report: AuditReport) -> str:
    return "".join(line + "\n" for line in human_lines(report))


def human_lines(report: AuditReport) -> Iterator[str]:
    """The report for people, a line at a time: findings by image, worst
    first; the backing graph; a count."""
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
    yield f"Backing graph ({_count(len(report.images), 'image')}):"
    yield from _tree(report)
    counts = {s: sum(1 for f in report.findings if f.severity is s) for s in Severity}
    yield ""
    yield (
        f"{_count(len(report.images), 'image')}; {_count(counts[Severity.ERROR], 'error')}, "
        f"{_count(counts[Severity.WARNING], 'warning')}, {_count(counts[Severity.INFO], 'note')}"
    )
