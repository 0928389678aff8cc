"""The audit report as text for people, JSON, and JSON lines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from imgchain.audit import AuditReport, ImageEntry
from imgchain.errors import shown
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


def json_lines(report: AuditReport) -> Iterator[str]:
    """One JSON object per image, its findings in it, one per line; then one
    line for each other place with findings (a folder that could not be read,
    a file that could not be read as an image)."""
    by_image: dict[str, list[Finding]] = {}
    for f in report.findings:
        by_image.setdefault(f.image, []).append(f)
    for entry in report.images:
        found = by_image.pop(entry.path, [])
        yield json.dumps({**image_dict(entry), "findings": [finding_dict(f) for f in found]}, ensure_ascii=True)
    for path, found in by_image.items():
        yield json.dumps({"path": path, "findings": [finding_dict(f) for f in found]}, ensure_ascii=True)


def json_chunks(report: AuditReport) -> Iterator[str]:
    """``{"images": [...], "findings": [...]}`` in pieces, an image or a
    finding at a time, so that a large store is never one string in memory."""

    def items(objects: Iterator[dict[str, Any]]) -> Iterator[str]:
        for i, obj in enumerate(objects):
            text = json.dumps(obj, indent=2, ensure_ascii=True).replace("\n", "\n    ")
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
        # (entry, prefix of its line, prefix of its children's lines); a stack, as chains may be deep
        stack: list[tuple[ImageEntry, str, str]] = [(root, "", "")]
        while stack:
            entry, line_prefix, child_prefix = stack.pop()
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
                suffix = f"  ({reason}: {entry.backing!r})"
            if id(entry) in seen:
                yield f"  {line_prefix}{shown(entry.path)}  (again: the graph loops here)"
                continue
            seen.add(id(entry))
            yield f"  {line_prefix}{shown(entry.path)}{suffix}"
            children = entry.dependent_entries
            for i, child in reversed(list(enumerate(children))):
                branch, under = ("└─ ", "   ") if i == len(children) - 1 else ("├─ ", "│  ")
                stack.append((child, child_prefix + branch, child_prefix + under))

    for entry in report.images:
        if not entry.is_overlay:
            yield from draw(entry, "")
    for entry in report.images:  # a loop has no base to hang from: start at one of its images
        if entry.on_loop and id(entry) not in seen:
            yield from draw(entry, "on a loop")
    for entry in report.images:  # (anything left, so that every image is drawn)
        if id(entry) not in seen:
            yield from draw(entry, "")


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
                lines.append(f"  {'':8} chain: {' -> '.join(shown(c) for c in f.chain)}")
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
