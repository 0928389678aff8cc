"""The audit's text output stays linear in the number of images, however
deep the chains."""

from __future__ import annotations

import itertools

from imgchain.audit import AuditReport, ImageEntry
from imgchain.emit.audit import _DRAWN_LEVELS, human


def chain_report(depth: int, fan: int = 0) -> AuditReport:
    """A base and ``depth`` overlays each on the one before (the last one on
    top), and ``fan`` more overlays on the deepest one."""
    entries = [ImageEntry(f"store/layer{i:05d}.qcow2", "probed", None) for i in range(depth + 1)]
    for entry in entries:
        entry.format = "qcow2"
        entry.virtual_size = 1 << 20
    for below, above in itertools.pairwise(entries):
        above.backing_name = below.path.rpartition("/")[2]
        below.add_dependent(above)
    deepest = entries[-1]
    for i in range(fan):
        leaf = ImageEntry(f"store/leaf{i:03d}.qcow2", "probed", None)
        leaf.backing_name = deepest.path.rpartition("/")[2]
        deepest.add_dependent(leaf)
        entries.append(leaf)
    return AuditReport(entries, [])


def graph_lines(report: AuditReport) -> list[str]:
    text = human(report, graph="tree")
    start = text.index("Backing graph")
    return text[start:].split("\n")[1 : 1 + len(report.images)]


def test_a_5000_layer_chain_prints_in_linear_size():
    small, big = human(chain_report(2500), "tree"), human(chain_report(5000), "tree")
    assert len(big) < 2.1 * len(small)
    widest = max(len(line) for line in graph_lines(chain_report(5000)))
    assert widest <= 3 * (_DRAWN_LEVELS + 1) + len("  [5000] store/layer05000.qcow2")
    assert len(big) < 5001 * 120


def test_deep_lines_keep_their_indentation_and_say_their_level():
    lines = graph_lines(chain_report(_DRAWN_LEVELS + 3, fan=2))
    assert lines[0] == "  store/layer00000.qcow2"
    assert lines[1] == "  └─ store/layer00001.qcow2"
    assert lines[2] == "     └─ store/layer00002.qcow2"
    capped = " " * (3 * _DRAWN_LEVELS + 2)
    assert lines[_DRAWN_LEVELS] == f"{capped[:-3]}└─ store/layer{_DRAWN_LEVELS:05d}.qcow2"
    for level in range(_DRAWN_LEVELS + 1, _DRAWN_LEVELS + 4):
        assert lines[level] == f"{capped}└─ [{level}] store/layer{level:05d}.qcow2"
    # The fan under the deepest layer: siblings, at the same level.
    level = _DRAWN_LEVELS + 4
    assert lines[level:] == [
        f"{capped}├─ [{level}] store/leaf000.qcow2",
        f"{capped}└─ [{level}] store/leaf001.qcow2",
    ]


def test_a_long_chain_in_a_finding_is_shown_by_its_ends():
    from imgchain.policy import finding

    report = chain_report(3)
    chain = tuple(f"store/layer{i:05d}.qcow2" for i in range(100))
    report.findings.append(finding("backing-missing", chain[-1], chain, "its backing file is missing"))
    line = next(line for line in human(report).splitlines() if "chain:" in line)
    assert line.endswith(
        "chain: store/layer00000.qcow2 -> store/layer00001.qcow2 -> store/layer00002.qcow2 -> store/layer00003.qcow2"
        " -> (92 more) -> store/layer00096.qcow2 -> store/layer00097.qcow2 -> store/layer00098.qcow2"
        " -> store/layer00099.qcow2"
    )
