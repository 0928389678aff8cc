"""imgchain's benchmark: throughput against the I/O floor, qemu-img and
OpenStack's format_inspector, measured side by side in one run.

Not part of the test suite.  Run it as docs/performance.md says:

    python3 -m venv .bench && .bench/bin/pip install -e . -r tests/benchmarks/requirements.txt
    .bench/bin/python tests/benchmarks/run.py [--images 10000]

It builds an image set with qemu-img (qcow2 v2 and v3, qed, raw, chains of
depth 1 to 5; templates made by qemu-img, copied), then prints a table of
medians and the ratios between them.  Every figure is measured in this run:
the ratios compare like with like on this machine, now.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SINGLES = {
    # name: (qemu-img create arguments, size)
    "v2.qcow2": (["-f", "qcow2", "-o", "compat=0.10,cluster_size=4096"], "1M"),
    "v3.qcow2": (["-f", "qcow2", "-o", "cluster_size=4096"], "1M"),
    "v3-64k.qcow2": (["-f", "qcow2"], "64M"),
    "plain.qed": (["-f", "qed", "-o", "cluster_size=4096,table_size=2"], "1M"),
    "disk.raw": (["-f", "raw"], "1M"),
}


@dataclass
class ImageSet:
    root: Path
    files: list[str]
    tops: list[str]


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, stdout=subprocess.DEVNULL)


def make_templates(where: Path) -> dict[str, Path]:
    """One of each single image and one chain of each depth, made by qemu-img."""
    out: dict[str, Path] = {}
    for name, (args, size) in SINGLES.items():
        qemu_img("create", *args, str(where / name), size)
        out[name] = where / name
    for depth in range(1, 6):
        chain = where / f"chain{depth}"
        chain.mkdir()
        qemu_img("create", "-f", "raw", str(chain / "l0.raw"), "1M")
        below, fmt = "l0.raw", "raw"
        for level in range(1, depth + 1):
            kind = "qed" if level == depth and depth % 2 == 0 else "qcow2"
            name = f"l{level}.{kind}"
            opts = "cluster_size=4096,table_size=2" if kind == "qed" else "cluster_size=4096"
            qemu_img("create", "-f", kind, "-o", opts, "-b", below, "-F", fmt, str(chain / name), "1M")
            below, fmt = name, kind
        out[f"chain{depth}"] = chain
    return out


def build(root: Path, count: int) -> ImageSet:
    """About ``count`` images: 70% single images of every kind, 30% in chains."""
    templates = make_templates(Path(tempfile.mkdtemp(prefix="imgchain-templates-")))
    files: list[str] = []
    tops: list[str] = []
    singles = list(SINGLES)
    i = 0
    while len(files) < count * 7 // 10:
        name = singles[i % len(singles)]
        folder = root / f"s{i // 1000:03d}"
        folder.mkdir(exist_ok=True)
        target = folder / f"{i:06d}-{name}"
        shutil.copyfile(templates[name], target)
        files.append(str(target))
        tops.append(str(target))
        i += 1
    c = 0
    while len(files) < count:
        depth = c % 5 + 1
        target = root / f"c{c // 200:03d}" / f"chain{c:05d}"
        shutil.copytree(templates[f"chain{depth}"], target)
        layers = sorted(str(p) for p in target.iterdir())
        files.extend(layers)
        tops.append(str(max(target.iterdir(), key=lambda p: int(p.name[1 : p.name.index(".")]))))
        c += 1
    shutil.rmtree(templates["v2.qcow2"].parent)
    return ImageSet(root, files, tops)


#: The bases of the chain-heavy store: every format a store of VM disks holds
#: (qemu-img create arguments, and the format an overlay records).
HEAVY_BASES = {
    "base.raw": (["-f", "raw"], "raw"),
    "base.qcow2": (["-f", "qcow2"], "qcow2"),
    "base.qed": (["-f", "qed"], "qed"),
    "base.vmdk": (["-f", "vmdk", "-o", "subformat=monolithicSparse"], "vmdk"),
    "flat.vmdk": (["-f", "vmdk", "-o", "subformat=monolithicFlat"], "vmdk"),
    "base.vpc": (["-f", "vpc"], "vpc"),
    "base.vhdx": (["-f", "vhdx"], "vhdx"),
    "base.vdi": (["-f", "vdi"], "vdi"),
}


def build_heavy(root: Path, count: int) -> ImageSet:
    """About ``count`` images, all in chains 2 to 5 deep (a base and 1 to 4
    qcow2 overlays, as qemu-img makes them), over the bases of HEAVY_BASES in
    turn: a store of VM disks, where nearly every image is a layer of a chain."""
    where = Path(tempfile.mkdtemp(prefix="imgchain-heavy-templates-"))
    templates: dict[tuple[str, int], Path] = {}
    for base, (args, fmt) in HEAVY_BASES.items():
        for depth in range(2, 6):
            chain = where / f"{base}-{depth}"
            chain.mkdir()
            qemu_img("create", *args, str(chain / base), "16M")
            below, below_fmt = base, fmt
            for level in range(1, depth):
                name = f"l{level}.qcow2"
                qemu_img("create", "-f", "qcow2", "-b", below, "-F", below_fmt, str(chain / name), "16M")
                below, below_fmt = name, "qcow2"
            templates[(base, depth)] = chain
    files: list[str] = []
    tops: list[str] = []
    bases = list(HEAVY_BASES)
    c = 0
    while len(files) < count:
        depth = c % 4 + 2
        target = root / f"h{c // 200:03d}" / f"chain{c:05d}"
        shutil.copytree(templates[(bases[(c // 4) % len(bases)], depth)], target)
        files.extend(str(p) for p in sorted(target.iterdir()))
        tops.append(str(target / (f"l{depth - 1}.qcow2")))
        c += 1
    shutil.rmtree(where)
    return ImageSet(root, files, tops)


_BARE_WALK = """
import os, sys
def walk(top):
    with os.scandir(top) as it:
        for entry in it:
            if entry.is_dir(follow_symlinks=False):
                walk(entry.path)
            else:
                os.stat(entry.path)
                fd = os.open(entry.path, os.O_RDONLY)
                os.read(fd, 4096)
                os.close(fd)
walk(sys.argv[1])
"""


#: The reads the audit cannot do without, and nothing else: construct
#: imported (the decoders are written with it), then per file the stat, open,
#: fstat, first 4 KiB and close of every probe, and for a qcow2 with 64 KiB
#: clusters the polyglot scan's two reads (a GPT header's 8 bytes at 4096,
#: sectors 16 to 31).  No decoding, no graph, no output: the floor of this
#: design on this store, in one process.
_AUDIT_IO = """
import os, sys
import construct
def walk(top):
    with os.scandir(top) as it:
        for entry in sorted(it, key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False):
                walk(entry.path)
            else:
                path = entry.path
                os.stat(path)
                fd = os.open(path, os.O_RDONLY)
                os.fstat(fd)
                head = os.pread(fd, 4096, 0)
                if head[:4] == b"QFI\\xfb" and head[23:24] == b"\\x10":
                    os.pread(fd, 8, 4096)
                    os.pread(fd, 32768, 32768)
                os.close(fd)
walk(sys.argv[1])
"""


def heavy(args: argparse.Namespace) -> list[tuple[str, float, bool]]:
    """The chain-heavy store: the audit as a whole process against the bare
    walk of the same store (one process: scandir, stat, open, read 4 KiB,
    close per file) and against a qemu-img loop over its tops."""
    work = Path(tempfile.mkdtemp(prefix="imgchain-heavy-"))
    print(f"building {args.images} chain-heavy images ...", file=sys.stderr)
    store = build_heavy(work, args.images)
    n, t = len(store.files), len(store.tops)
    repeat = max(3, args.repeat // 2)
    audit = [sys.executable, "-m", "imgchain", "audit"]
    # alternate the runs, as for (a) and (b): their ratios come from one round each
    jobs = {
        "bare": [sys.executable, "-c", _BARE_WALK, str(work)],
        "io": [sys.executable, "-c", _AUDIT_IO, str(work)],
        "json": [*audit, "--output", "json", str(work)],
        "jsonl": [*audit, "--output", "jsonl", str(work)],
        "human": [*audit, str(work)],
        "json1": [*audit, "--jobs", "1", "--output", "json", str(work)],
    }
    runs: dict[str, list[float]] = {k: [] for k in jobs}
    rss: dict[str, int] = {}
    for _ in range(repeat + 1):
        for name, command in jobs.items():
            seconds, peak = run_process(command, 1)
            runs[name].append(seconds)
            rss[name] = max(rss.get(name, 0), peak)
    runs = {k: v[1:] for k, v in runs.items()}  # (the first round warms the caches)
    bare = statistics.median(runs["bare"])
    q_per_top = qemu_loop(store.tops, args.qemu_sample)
    qemu_s = q_per_top * t
    print(f"\n| {f'chain-heavy store: {n} images, {t} chains, depths 2-5':<52} | {'median':>12} | {'unit':<9} |")
    print(f"|{'-' * 54}|{'-' * 14}|{'-' * 11}|")
    print(f"| {'bare walk: scandir+stat+open+read 4 KiB+close':<52} | {bare:>12.3f} | {'s':<9} |")
    label = "the audit's reads alone (construct, no decoding)"
    print(f"| {label:<52} | {statistics.median(runs['io']):>12.3f} | {'s':<9} |")
    for name in ("json", "jsonl", "human"):
        label = f"imgchain audit --output {name} STORE"
        print(f"| {label:<52} | {statistics.median(runs[name]):>12.3f} | {'s':<9} |")
    label = "the same, --output json --jobs 1 (one process)"
    print(f"| {label:<52} | {statistics.median(runs['json1']):>12.3f} | {'s':<9} |")
    print(f"| {'qemu-img info --backing-chain loop over the tops':<52} | {qemu_s:>12.3f} | {'s':<9} |")
    print(f"| {'imgchain audit --output json STORE, peak RSS':<52} | {rss['json'] / 1024:>12.1f} | {'MiB':<9} |")
    out = []
    for name in ("json", "jsonl", "human"):
        ratio = statistics.median(a / b for a, b in zip(runs[name], runs["bare"], strict=True))
        out.append((f"heavy: audit {name} / bare walk, at most 2x", ratio, ratio <= 2))
    json_s = statistics.median(runs["json"])
    out.append(("heavy: qemu-img loop / audit json, at least 50x", qemu_s / json_s, qemu_s / json_s >= 50))
    out.append(("heavy: audit json peak RSS, under 100 MiB", rss["json"] / 1024, rss["json"] / 1024 < 100))
    shutil.rmtree(work)
    return out


# -- what is measured --------------------------------------------------------------------------


def floor(files: list[str]) -> None:
    """(a) The I/O floor: open, fstat, read the first 512 bytes, close."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fstat(fd)
            os.read(fd, 512)
        finally:
            os.close(fd)


def probe_decode(files: list[str]) -> None:
    """(b) imgchain's probe and decode of each file, in process."""
    from imgchain.probe import read_image

    for path in files:
        read_image(path, tables=False)


def resolve(tops: list[str]) -> None:
    """(c) imgchain's chain resolution from each top image, in process."""
    from imgchain.chain import resolve_chain

    for path in tops:
        resolve_chain(path, tables=False)


def oslo(files: list[str]) -> None:
    """(e) OpenStack's format_inspector: detect, then the safety check."""
    import logging

    from oslo_utils.imageutils import format_inspector

    logging.getLogger("oslo_utils").setLevel(logging.ERROR)  # it logs every failed check
    for path in files:
        inspector = format_inspector.detect_file_format(path)
        with contextlib.suppress(format_inspector.SafetyCheckFailed):
            inspector.safety_check()


def timed(fn: Callable[[list[str]], None], items: list[str], repeat: int) -> float:
    """Median seconds of ``repeat`` runs (one untimed warm-up run first)."""
    fn(items)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(items)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(jobs: list[tuple[Callable[[list[str]], None], list[str]]], rounds: int) -> list[list[float]]:
    """Seconds of each job in each round, the jobs run one after the other
    within a round (after one untimed warm-up round)."""
    out = []
    for round_ in range(rounds + 1):
        times = []
        for fn, items in jobs:
            start = time.perf_counter()
            fn(items)
            times.append(time.perf_counter() - start)
        if round_:
            out.append(times)
    return out


def run_process(args: list[str], repeat: int) -> tuple[float, int]:
    """Median wall seconds of a whole process, and its peak RSS in KiB.

    The RSS comes from GNU time when it is installed: a child forked from
    this (large) benchmark process would count this process's pages in its
    own peak before it execs, so ``wait4``'s figure is only a fallback."""
    timer = shutil.which("time") if os.path.exists("/usr/bin/time") else None
    times, peaks = [], []
    for _ in range(repeat):
        with tempfile.NamedTemporaryFile("r") as report:
            command = ["/usr/bin/time", "-f", "%M", "-o", report.name, *args] if timer else args
            start = time.perf_counter()
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _, status, usage = os.wait4(proc.pid, 0)
            times.append(time.perf_counter() - start)
            peaks.append(int(report.read().split()[-1]) if timer else usage.ru_maxrss)
        if os.waitstatus_to_exitcode(status) not in (0, 1):
            raise SystemExit(f"benchmark: {' '.join(args)} exited {status}")
    return statistics.median(times), max(peaks)


def qemu_loop(tops: list[str], sample: int) -> float:
    """Seconds per top image of ``qemu-img info --backing-chain --output=json``
    run once per image, as a shell loop would (over a sample of the tops)."""
    chosen = tops[:: max(1, len(tops) // sample)][:sample]
    start = time.perf_counter()
    for path in chosen:
        subprocess.run(
            ["qemu-img", "info", "--backing-chain", "--output=json", path],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
    return (time.perf_counter() - start) / len(chosen)


# -- the table -----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000, help="size of the image set (default 10000)")
    parser.add_argument("--repeat", type=int, default=9, help="timed runs per in-process figure (median)")
    parser.add_argument("--qemu-sample", type=int, default=300, help="top images timed with qemu-img")
    parser.add_argument("--dir", help="build the image set here (default: a temporary folder)")
    parser.add_argument(
        "--scale", type=int, default=0, metavar="N", help="also measure memory on a store of N images (e.g. 100000)"
    )
    parser.add_argument("--no-heavy", action="store_true", help="leave out the chain-heavy store")
    args = parser.parse_args()
    if shutil.which("qemu-img") is None:
        raise SystemExit("benchmark: qemu-img is needed to build the image set")
    root = Path(args.dir or tempfile.mkdtemp(prefix="imgchain-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"building {args.images} images in {root} ...", file=sys.stderr)
    images = build(root, args.images)
    n, t = len(images.files), len(images.tops)
    print(f"{n} images, {t} top images; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}", file=sys.stderr)

    rows: list[tuple[str, str, float]] = []  # (label, unit, per-second rate)
    # (a) and (b) in alternation, round by round: the machine's mood moves
    # both alike, and their ratio is the median of the rounds' ratios.
    rounds = interleaved([(floor, images.files), (probe_decode, images.files)], args.repeat)
    a = n / statistics.median(r[0] for r in rounds)
    rows.append(("(a) I/O floor: open+fstat+read 512+close", "files/s", a))
    b = n / statistics.median(r[1] for r in rounds)
    rows.append(("(b) imgchain probe+decode, in process", "images/s", b))
    b_over_a = statistics.median(r[0] / r[1] for r in rounds)
    c = t / timed(resolve, images.tops, args.repeat)
    rows.append(("(c) imgchain chain resolution, in process", "chains/s", c))
    import imgchain
    import imgchain.formats

    for package in (imgchain, imgchain.formats):
        compileall.compile_dir(os.path.realpath(os.path.dirname(package.__file__)), quiet=1)
    audit_s, audit_rss = run_process([sys.executable, "-m", "imgchain", "audit", str(root)], max(1, args.repeat // 2))
    d = n / audit_s
    rows.append(("(d) imgchain audit DIR, whole process", "images/s", d))
    q = None
    q_per_top = qemu_loop(images.tops, args.qemu_sample)
    q = n / (q_per_top * t)  # the whole set's images, covered by a loop over its tops
    rows.append(("(d) qemu-img info --backing-chain loop over tops", "images/s", q))
    e = None
    try:
        import oslo_utils.imageutils.format_inspector  # noqa: F401
    except ImportError:
        print("benchmark: oslo.utils not installed; (e) skipped", file=sys.stderr)
    else:
        e = n / timed(oslo, images.files, max(1, args.repeat // 2))
        rows.append(("(e) oslo format_inspector detect+safety_check", "images/s", e))

    # Whole-process figures run the package as pip installs it: compiled to
    # bytecode (this environment may set PYTHONDONTWRITEBYTECODE).
    import imgchain
    import imgchain.formats

    for package in (imgchain, imgchain.formats):
        compileall.compile_dir(os.path.realpath(os.path.dirname(package.__file__)), quiet=1)
    base_runs = [run_process([sys.executable, "-c", "import construct"], 1)[0] for _ in range(15)]
    info_runs = [run_process([sys.executable, "-m", "imgchain", "info", images.tops[0]], 1)[0] for _ in range(15)]
    base, info = statistics.median(base_runs), statistics.median(info_runs)

    print(
        f"\nimgchain benchmark: {n} images ({t} tops), {time.strftime('%Y-%m-%d')}, {os.uname().machine}, "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}\n"
    )
    print(f"| {'measure':<52} | {'median':>12} | {'unit':<9} |")
    print(f"|{'-' * 54}|{'-' * 14}|{'-' * 11}|")
    for label, unit, rate in rows:
        print(f"| {label:<52} | {rate:>12,.0f} | {unit:<9} |")
    print(f"| {'imgchain info, one image, whole process':<52} | {info * 1000:>12.1f} | {'ms':<9} |")
    label = 'python3 -c "import construct", whole process'
    print(f"| {label:<52} | {base * 1000:>12.1f} | {'ms':<9} |")
    print(f"| {'imgchain audit DIR, peak RSS':<52} | {audit_rss / 1024:>12.1f} | {'MiB':<9} |")

    targets = [
        ("(b) / (a), at least 1/3 (median of rounds)", b_over_a, b_over_a >= 1 / 3),
        ("(d) audit / qemu-img loop, at least 50x", d / q, d / q >= 50),
        ("(b) / (e) format_inspector, at least 10x", b / e if e else float("nan"), e is None or b / e >= 10),
        ("info / import construct, at most 1.3x", info / base, info / base <= 1.3),
        ("audit peak RSS, under 100 MiB", audit_rss / 1024, audit_rss / 1024 < 100),
    ]
    if args.scale:
        targets += scale(args.scale, audit_rss, n)
    if not args.no_heavy:
        targets += heavy(args)
    print(f"\n| {'ratio or check (same run)':<46} | {'value':>8} | {'target':<6} |")
    print(f"|{'-' * 48}|{'-' * 10}|{'-' * 8}|")
    for label, value, ok in targets:
        print(f"| {label:<46} | {value:>8.2f} | {'met' if ok else 'MISSED':<6} |")
    if not args.dir:
        shutil.rmtree(root)
    return 0 if all(ok for *_, ok in targets) else 1


def scale(count: int, small_rss: int, small_n: int) -> list[tuple[str, float, bool]]:
    """Memory at scale: a store of ``count`` images, and single images that
    are huge (sparse) or deep, each audited by a whole process."""
    audit = [sys.executable, "-m", "imgchain", "audit"]
    work = Path(tempfile.mkdtemp(prefix="imgchain-scale-"))
    print(f"building {count} images for the scale figures ...", file=sys.stderr)
    (work / "store").mkdir()
    big = build(work / "store", count)
    big_s, big_rss = run_process([*audit, str(work / "store")], 1)
    per_image = (big_rss - small_rss) * 1024 / (len(big.files) - small_n)
    qemu_img("create", "-f", "qcow2", str(work / "tiny.qcow2"), "1M")
    qemu_img("create", "-f", "qcow2", str(work / "huge.qcow2"), "4T")
    with open(work / "huge.raw", "wb") as f:
        f.truncate(1 << 40)
    deep = work / "deep"
    deep.mkdir()
    qemu_img("create", "-f", "raw", str(deep / "l0.raw"), "1M")
    for level in range(1, 200):
        below, fmt = (f"l{level - 1}.qcow2", "qcow2") if level > 1 else ("l0.raw", "raw")
        qemu_img("create", "-f", "qcow2", "-b", below, "-F", fmt, str(deep / f"l{level}.qcow2"), "1M")
    rss = {name: run_process([*audit, str(work / name)], 3)[1] for name in ("tiny.qcow2", "huge.qcow2", "huge.raw")}
    rss["deep"] = run_process([*audit, str(deep / "l199.qcow2")], 3)[1]
    print(f"\n| {'scale (whole process, peak RSS)':<52} | {'value':>12} | {'unit':<9} |")
    print(f"|{'-' * 54}|{'-' * 14}|{'-' * 11}|")
    print(f"| {f'imgchain audit of {len(big.files)} images, time':<52} | {big_s:>12.1f} | {'s':<9} |")
    print(f"| {f'imgchain audit of {len(big.files)} images, peak RSS':<52} | {big_rss / 1024:>12.1f} | {'MiB':<9} |")
    print(f"| {'memory per image (RSS growth / extra images)':<52} | {per_image:>12.0f} | {'bytes':<9} |")
    for name, label in (
        ("tiny.qcow2", "a 1 MiB qcow2"),
        ("huge.qcow2", "a 4 TiB sparse qcow2"),
        ("huge.raw", "a 1 TiB sparse raw"),
        ("deep", "a 200-layer chain (from its top)"),
    ):
        print(f"| {f'audit of {label}, peak RSS':<52} | {rss[name] / 1024:>12.1f} | {'MiB':<9} |")
    shutil.rmtree(work)
    tiny = rss["tiny.qcow2"]
    return [
        (f"audit of {len(big.files)} images finishes", 1.0, True),
        ("memory per image, at most 500 bytes", per_image, per_image <= 500),
        ("4 TiB qcow2 / 1 MiB qcow2 peak RSS, about 1", rss["huge.qcow2"] / tiny, rss["huge.qcow2"] <= tiny * 1.05),
        ("1 TiB raw / 1 MiB qcow2 peak RSS, about 1", rss["huge.raw"] / tiny, rss["huge.raw"] <= tiny * 1.05),
        ("200 layers / 1 MiB qcow2 peak RSS, about 1", rss["deep"] / tiny, rss["deep"] <= tiny * 1.10),
    ]


if __name__ == "__main__":
    sys.exit(main())
