"""Helper processes (``audit --jobs``, imgchain.parallel): the same report
as one process gives, on every hostile shape; symlinks are never read by a
helper; a helper that dies costs nothing but time; none is left behind."""

from __future__ import annotations

import json
import os
import pathlib
import signal

import craft
import pytest
from test_audit import FIXTURES, MID, PLAIN, put, put_hostile, qcow2_naming

import imgchain.audit
import imgchain.parallel
from imgchain.audit import audit
from imgchain.cli import main
from imgchain.emit.audit import to_json
from imgchain.parallel import ordered_map


@pytest.fixture
def helpers_always(monkeypatch):
    """Helpers for stores of any size, in small batches (many rounds)."""
    monkeypatch.setattr(imgchain.parallel, "MIN_ITEMS", 1)
    monkeypatch.setattr(imgchain.parallel, "BATCH", 2)


def no_children_left() -> bool:
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def square(n: int) -> int | None:
    return n * n if n % 7 else None  # (None: "do this one yourself")


@pytest.mark.parametrize("jobs", [2, 3, 5])
def test_results_in_order_with_the_caller_s_share_left_to_it(helpers_always, jobs):
    items = list(range(101))
    got = list(ordered_map(square, items, jobs))
    assert len(got) == len(items)
    # The caller's batches come back as None; every other result is the helper's, in its place.
    assert {i for i, r in enumerate(got) if r is not None} == {i for i in items if i % 7 and (i // 2) % (jobs) != 0}
    assert all(r == i * i for i, r in enumerate(got) if r is not None)
    assert no_children_left()


def test_small_inputs_and_one_job_use_no_helper(monkeypatch):
    monkeypatch.setattr(os, "fork", lambda: pytest.fail("forked"))
    assert list(ordered_map(square, list(range(10)), 8)) == [None] * 10  # (fewer than MIN_ITEMS)
    assert list(ordered_map(square, list(range(5000)), 1)) == [None] * 5000


def test_no_helper_while_another_thread_runs(helpers_always):
    import threading

    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert list(ordered_map(square, list(range(20)), 4)) == [None] * 20
    finally:
        stop.set()
        thread.join()
    assert list(ordered_map(square, list(range(20)), 2))[2:4] == [4, 9]  # (the thread is gone: helpers again)


def die_at_11(n: int) -> int:
    if n == 11:
        os._exit(3)  # a helper that dies mid-way
    return n


def test_a_helper_that_dies_leaves_its_share_to_the_caller(helpers_always):
    got = list(ordered_map(die_at_11, list(range(40)), 2))
    # batches of 2, the caller takes every other one: the helper's results until it died, then None
    assert got[:10] == [None, None, 2, 3, None, None, 6, 7, None, None]
    assert got[10:] == [None] * 30
    assert no_children_left()


def test_closing_early_stops_and_reaps_the_helpers(helpers_always):
    results = ordered_map(square, list(range(1000)), 3)
    assert next(results) is None  # (the caller's first batch)
    results.close()
    assert no_children_left()


def test_ctrl_c_in_a_helper_is_quiet(helpers_always):
    """A helper killed by SIGINT (Ctrl-C reaches the whole process group) just
    stops: its share falls back to the caller, with no traceback of its own."""

    def interrupted(n: int) -> int:
        if n == 7:
            os.kill(os.getpid(), signal.SIGINT)
        return n

    assert list(ordered_map(interrupted, list(range(12)), 2)) == [None, None, 2, 3, *[None] * 8]
    assert no_children_left()


# -- the audit -----------------------------------------------------------------------------------------


def hostile_store(root: pathlib.Path) -> None:
    """Clean chains, and every shape that makes the audit read a file its own
    way: symlinks, a FIFO, headers that do not decode, json: names, a data
    file, a loop, a vmdk, a file named twice (a hard link)."""
    put(root / "bases/base.raw", b"\0" * 65536)
    for i in range(6):
        put(root / f"vm{i}/mid.qcow2", qcow2_naming("../bases/base.raw", "raw"))
        put(root / f"vm{i}/top.qcow2", qcow2_naming("mid.qcow2", "qcow2"))
    put(root / "vm0/unrecorded.qcow2", qcow2_naming("mid.qcow2", None))
    put(root / "vm1/over.qed", (FIXTURES / "chain/over-raw.qed").read_bytes())
    put(root / "vm1/base.raw", b"\0" * 512)
    os.link(root / "vm1/mid.qcow2", root / "vm2/hardlink.qcow2")
    h = root / "hostile"
    put_hostile(h)  # (and more shapes that make the audit read a file its own way:)
    os.symlink("../bases/base.raw", h / "inside-link.raw")
    put(h / "short.qcow2", MID[:40])
    put(h / "dirty.qcow2", craft.patch(PLAIN, craft.QCOW2_FIELDS, incompatible_features=1))
    put(h / "json-backing.qcow2", qcow2_naming('json:{"driver":"qcow2","file":{"driver":"file","filename":"x"}}', None))
    put(h / "data.raw", (FIXTURES / "misc/data.raw").read_bytes())
    put(h / "empty.raw", b"")
    vmdk = b'# Disk DescriptorFile\nversion=1\ncreateType="monolithicFlat"\nRW 2048 FLAT "/etc/shadow" 0\n'
    put(h / "extent.vmdk", vmdk)


@pytest.mark.parametrize(
    "options",
    [{}, {"fmt": "raw"}, {"fmt": "qcow2"}, {"standalone": True}, {"formats": ["qcow2", "raw"]}],
    ids=["probed", "-f raw", "-f qcow2", "standalone", "formats"],
)
def test_audit_with_helpers_reports_what_one_process_does(tmp_path, monkeypatch, options):
    monkeypatch.chdir(tmp_path)
    hostile_store(tmp_path)
    alone = to_json(audit(["."], jobs=1, **options))
    monkeypatch.setattr(imgchain.parallel, "MIN_ITEMS", 1)
    for batch in (1, 2, 5):
        monkeypatch.setattr(imgchain.parallel, "BATCH", batch)
        for jobs in (2, 3):
            assert to_json(audit(["."], jobs=jobs, **options)) == alone
    assert no_children_left()
    assert json.loads(alone)["findings"]  # (the store is hostile: the comparison is not of empty reports)


def test_helpers_read_no_symlink_and_nothing_the_walk_did_not_find(tmp_path, monkeypatch, helpers_always):
    monkeypatch.chdir(tmp_path)
    hostile_store(tmp_path)
    given: list[str | None] = []
    facts: list[imgchain.audit.Facts | None] = []
    real = imgchain.audit.ordered_map

    def spy(work, items, jobs):  # type: ignore[no-untyped-def]
        given.extend(items)
        for result in real(work, items, jobs):
            facts.append(result)
            yield result

    monkeypatch.setattr(imgchain.audit, "ordered_map", spy)
    audit(["."], jobs=2)
    # the helpers did their half (less what does not read cleanly): the audit took their facts
    assert sum(f is not None for f in facts) >= len(facts) // 3
    links = {"./hostile/base.raw", "./hostile/inside-link.raw"}
    assert len(given) > 30 and not links.intersection(given)  # each given to the helpers as None
    assert given.count(None) == len(links)
    assert "./hostile/pipe" not in given


def test_jobs_on_the_command_line(tmp_path, monkeypatch, capsys, helpers_always):
    monkeypatch.chdir(tmp_path)
    hostile_store(tmp_path)
    outputs = []
    for jobs in ("1", "2"):
        assert main(["audit", "--output", "json", "--jobs", jobs, "."]) == 1
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    with pytest.raises(SystemExit):
        main(["audit", "--jobs", "0", "."])
    assert "0 is not at least 1" in capsys.readouterr().err
