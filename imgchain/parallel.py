"""Work on many files shared with helper processes, results in order.

The audit of a large store spends most of its time reading headers, one
file after another, on one CPU.  :func:`ordered_map` shares that work with
helper processes (``fork``: they start with this process's state, and
nothing is imported or pickled to start them) and gives the results back in
the order of the input, as they arrive, so that memory stays that of a
batch or two whatever the size of the store.

A helper sends back what ``work`` returns for each item of its batches,
pickled; ``work`` must not raise (a helper that does, or dies, is dropped,
and the caller is told to do the rest of its share itself).  A result of
None also means "do this one yourself": the caller's own, exact handling
of the item (an error reported as it would be without helpers) stays the
one path for anything unusual.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Generator, Sequence
from typing import BinaryIO, TypeVar

__all__ = ["BATCH", "MIN_ITEMS", "ordered_map", "usable_cpus"]

T = TypeVar("T")
R = TypeVar("R")

#: Items per batch that a helper works on and sends back in one piece.
BATCH = 64
#: Below this many items, helper processes cost more than they save.
MIN_ITEMS = 1500


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # (not Linux)
        return os.cpu_count() or 1


def ordered_map(work: Callable[[T], R | None], items: Sequence[T], jobs: int) -> Generator[R | None, None, None]:
    """For each of ``items`` in order: ``work(item)`` as a helper process
    computed it, or None where the caller is to do that item itself (its own
    share of the batches, or what a helper could not do).

    With ``jobs`` > 1 and at least :data:`MIN_ITEMS` items, ``jobs - 1``
    helpers are started, where ``fork`` is safe: on a system that has it, in
    a process with no other thread running (a fork copies one thread, and
    any lock another one holds stays held in the copy).  Run the generator
    to its end or close it: either stops and reaps the helpers."""
    helpers = max(0, jobs - 1) if len(items) >= MIN_ITEMS and _can_fork() else 0
    if not helpers:
        yield from (None for _ in items)
        return
    # Batch b goes to process b % jobs (0: the caller).  Taking in a helper's result costs the caller
    # about a seventh of reading the file, but the caller also turns every result into its audit
    # entry: on 2 CPUs, an equal share was measured best (docs/performance.md).
    batches = [items[i : i + BATCH] for i in range(0, len(items), BATCH)]
    owner = [b % (helpers + 1) for b in range(len(batches))]
    procs: list[tuple[int, BinaryIO] | None] = []
    try:
        for h in range(1, helpers + 1):
            procs.append(_start(work, [batch for b, batch in enumerate(batches) if owner[b] == h]))
        for b, batch in enumerate(batches):
            got = _receive(procs, owner[b] - 1) if owner[b] else None
            if got is None or len(got) != len(batch):
                yield from (None for _ in batch)
            else:
                yield from got
    finally:
        for proc in procs:
            if proc is not None:
                _reap(*proc)


def _can_fork() -> bool:
    threading = sys.modules.get("threading")  # (not imported: no thread but this one)
    return hasattr(os, "fork") and (threading is None or threading.active_count() == 1)


def _start(work: Callable[[T], R | None], batches: list[Sequence[T]]) -> tuple[int, BinaryIO] | None:
    """Fork a helper that does ``batches`` and pickles each batch's results
    to a pipe: (its pid, the pipe's reading end), or None if it cannot start."""
    import pickle  # (only a store large enough for helpers needs it)

    try:
        r, w = os.pipe()
    except OSError:
        return None
    try:
        pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        return None
    if pid:
        os.close(w)
        return pid, os.fdopen(r, "rb")
    # The helper.  Nothing of the caller's runs here on the way out (its
    # buffered output, its exit handlers): it leaves by os._exit only.
    status = 1
    try:
        os.close(r)
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # (Ctrl-C: the caller reports it, helpers just stop)
        with os.fdopen(w, "wb") as out:
            for batch in batches:
                pickle.dump([work(item) for item in batch], out, pickle.HIGHEST_PROTOCOL)
                out.flush()
        status = 0
    finally:
        os._exit(status)


def _receive(procs: list[tuple[int, BinaryIO] | None], i: int) -> list[R | None] | None:
    """Helper ``i``'s next batch, or None (and from then on) if it has died."""
    import pickle

    proc = procs[i]
    if proc is None:
        return None
    try:
        got = pickle.load(proc[1])
    except Exception:  # (the end of the pipe, a broken pickle: the helper died)
        _reap(*proc)
        procs[i] = None
        return None
    return got if isinstance(got, list) else None


def _reap(pid: int, pipe: BinaryIO) -> None:
    pipe.close()
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)  # (nothing to a helper that is done: it waits to be reaped)
    with contextlib.suppress(OSError):
        os.waitpid(pid, 0)
