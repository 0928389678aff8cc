"""imgchain against the real ``qemu-img`` 7.2: same images, same output.

Every case of :data:`qemu_cases.CASES` is built with ``qemu-img`` in a fresh
directory and described by both programs from inside it (so "filename"
strings are relative, as a user's are):

* ``info --backing-chain --output=json``: the parsed JSON must be equal
  field for field, and the text byte for byte;
* ``info --backing-chain`` (human text, TZ=UTC): byte for byte;
* ``info --output=json`` and ``info`` without ``--backing-chain``: the same.

The refusal tests patch one header field of a ``qemu-img``-made image into
something qemu refuses; imgchain must refuse it too, with exit status 1 and
one ``imgchain: ...`` line on stderr.

imgchain runs in-process (``imgchain.cli.main``) for speed; anything it lets
escape is reported as the traceback a user would see.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import struct
import subprocess
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from imgchain import cli

try:  # tests/ may or may not be a package
    from . import qemu_cases as qc  # type: ignore[import-not-found]
except ImportError:
    import qemu_cases as qc  # type: ignore[import-not-found,no-redef]

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed"),
]


# -- running both programs ------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    rc: int | None  # None: an exception escaped imgchain.cli.main
    out: bytes
    err: str


def qemu(args: list[str], cwd: Path) -> Run:
    env = {**os.environ, "TZ": "UTC"}
    done = subprocess.run(["qemu-img", *args], cwd=cwd, env=env, capture_output=True, check=False, timeout=60)
    return Run(done.returncode, done.stdout, done.stderr.decode("utf-8", "replace"))


@pytest.fixture
def imgchain(capsysbinary: pytest.CaptureFixture[bytes]) -> Any:
    """Run ``imgchain.cli.main(args)`` in-process, capturing its output."""

    def run(args: list[str]) -> Run:
        capsysbinary.readouterr()
        try:
            rc: int | None = cli.main(args)
            extra = ""
        except SystemExit as exc:  # argparse usage errors
            rc = exc.code if isinstance(exc.code, int) else 1
            extra = ""
        except Exception:
            rc = None
            extra = traceback.format_exc()
        captured = capsysbinary.readouterr()
        return Run(rc, captured.out, captured.err.decode("utf-8", "replace") + extra)

    return run


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """tmp_path as the current directory, with TZ=UTC (for snapshot dates)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield tmp_path
    monkeypatch.undo()
    time.tzset()


# -- readable differences ------------------------------------------------------------


def field_diff(ours: Any, theirs: Any, path: str = "$") -> list[str]:
    """Every place where imgchain's JSON (ours) differs from qemu's (theirs)."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        lines: list[str] = []
        for key in theirs:
            if key not in ours:
                lines.append(f"{path}.{key}: missing in imgchain (qemu: {json.dumps(theirs[key])})")
            else:
                lines += field_diff(ours[key], theirs[key], f"{path}.{key}")
        lines += [f"{path}.{key}: only in imgchain ({json.dumps(ours[key])})" for key in ours if key not in theirs]
        return lines
    if isinstance(ours, list) and isinstance(theirs, list):
        lines = []
        if len(ours) != len(theirs):
            lines.append(f"{path}: {len(ours)} items in imgchain, {len(theirs)} in qemu")
        for i, (a, b) in enumerate(zip(ours, theirs, strict=False)):
            lines += field_diff(a, b, f"{path}[{i}]")
        return lines
    if ours != theirs or type(ours) is not type(theirs):
        return [f"{path}: imgchain {json.dumps(ours)} != qemu {json.dumps(theirs)}"]
    return []


def text_diff(ours: bytes, theirs: bytes) -> str:
    a = theirs.decode("utf-8", "surrogateescape").splitlines(keepends=True)
    b = ours.decode("utf-8", "surrogateescape").splitlines(keepends=True)
    diff = "".join(difflib.unified_diff(a, b, "qemu-img", "imgchain"))
    first = next((i for i, (x, y) in enumerate(zip(ours, theirs, strict=False)) if x != y), min(len(ours), len(theirs)))
    return f"first difference at byte {first} (qemu {len(theirs)} bytes, imgchain {len(ours)} bytes)\n{diff}"


def check_json(case: qc.Case, args: list[str], workdir: Path, imgchain: Any) -> None:
    top = qc.build_case(case, workdir)
    want = qemu(["info", *args, "--output=json", top], workdir)
    assert want.rc == 0, f"qemu-img refused its own image ({case.id}): {want.err}"
    got = imgchain(["info", *args, "--output=json", top])
    assert got.rc == 0, f"imgchain failed with {got.rc} where qemu-img succeeded:\n{got.err}"

    theirs = json.loads(want.out)
    try:
        ours = json.loads(got.out)
    except ValueError as exc:
        pytest.fail(f"imgchain printed no JSON ({exc}):\n{text_diff(got.out, want.out)}")
    diffs = field_diff(ours, theirs)
    assert ours == theirs, "JSON differs:\n" + "\n".join(diffs) + "\n\n" + text_diff(got.out, want.out)
    assert got.out == want.out, "same JSON values, different bytes:\n" + text_diff(got.out, want.out)


def check_human(case: qc.Case, args: list[str], workdir: Path, imgchain: Any) -> None:
    top = qc.build_case(case, workdir)
    want = qemu(["info", *args, top], workdir)
    assert want.rc == 0, f"qemu-img refused its own image ({case.id}): {want.err}"
    got = imgchain(["info", *args, top])
    assert got.rc == 0, f"imgchain failed with {got.rc} where qemu-img succeeded:\n{got.err}"
    assert got.out == want.out, "human output differs:\n" + text_diff(got.out, want.out)


@pytest.mark.parametrize("case", qc.CASES, ids=str)
def test_backing_chain_json(case: qc.Case, workdir: Path, imgchain: Any) -> None:
    check_json(case, ["--backing-chain"], workdir, imgchain)


@pytest.mark.parametrize("case", qc.CASES, ids=str)
def test_backing_chain_human(case: qc.Case, workdir: Path, imgchain: Any) -> None:
    check_human(case, ["--backing-chain"], workdir, imgchain)


@pytest.mark.parametrize("case", qc.CASES, ids=str)
def test_top_only_json(case: qc.Case, workdir: Path, imgchain: Any) -> None:
    check_json(case, [], workdir, imgchain)


@pytest.mark.parametrize("case", qc.CASES, ids=str)
def test_top_only_human(case: qc.Case, workdir: Path, imgchain: Any) -> None:
    check_human(case, [], workdir, imgchain)


# -- refusals -------------------------------------------------------------------------

F, Q = qc.Qcow2Field, qc.QedField
QCOW2 = qc.create("a.qcow2", opts="cluster_size=65536")  # header_length 112, feature table at 112
QCOW2_512 = qc.create("a.qcow2")
QED = qc.create("a.qed", "qed", opts=None)  # 64K clusters, header_size 1, table_size 4


def refusal(id_: str, base: tuple[str, ...], *patches: qc.Patch) -> qc.Case:
    top = "a.qed" if "qed" in base else "a.qcow2"
    return qc.Case(id_, (base,), top, patches)


REFUSALS = [
    refusal("qcow2-version-4", QCOW2, F("a.qcow2", "version", 4)),
    refusal("qcow2-cluster-bits-8", QCOW2, F("a.qcow2", "cluster_bits", 8)),
    refusal("qcow2-cluster-bits-22", QCOW2, F("a.qcow2", "cluster_bits", 22)),
    refusal("qcow2-v3-header-length-100", QCOW2, F("a.qcow2", "header_length", 100)),
    refusal("qcow2-header-length-past-cluster", QCOW2_512, F("a.qcow2", "header_length", 520)),
    refusal(
        "qcow2-backing-offset-past-cluster",
        QCOW2,
        qc.Poke("a.qcow2", 0x10200, b"base.raw"),
        F("a.qcow2", "backing_file_offset", 0x10200),
        F("a.qcow2", "backing_file_size", 8),
    ),
    refusal(
        "qcow2-backing-size-1024",
        QCOW2,
        qc.Poke("a.qcow2", 0x200, b"b" * 1024),
        F("a.qcow2", "backing_file_offset", 0x200),
        F("a.qcow2", "backing_file_size", 1024),
    ),
    refusal("qcow2-unknown-incompat-bit", QCOW2, F("a.qcow2", "incompatible_features", 1 << 5, "|")),
    refusal("qcow2-unknown-incompat-bit-63", QCOW2, F("a.qcow2", "incompatible_features", 1 << 63, "|")),
    refusal(
        "qcow2-unknown-incompat-bit-named",
        QCOW2,
        qc.ReplaceExtensions("a.qcow2", ((qc.EXT_FEATURE_TABLE, qc.feature_entry(0, 5, b"frobnication")),)),
        F("a.qcow2", "incompatible_features", 1 << 5, "|"),
    ),
    refusal("qcow2-refcount-order-7", QCOW2, F("a.qcow2", "refcount_order", 7)),
    refusal("qcow2-crypt-method-3", QCOW2, F("a.qcow2", "crypt_method", 3)),
    refusal("qcow2-extension-past-cluster", QCOW2, qc.Poke("a.qcow2", 112, struct.pack(">II", 0x12345678, 0x10000))),
    refusal(
        "qcow2-backing-format-16-bytes",
        QCOW2,
        qc.ReplaceExtensions("a.qcow2", ((qc.EXT_BACKING_FORMAT, b"qcow2".ljust(16, b"\0")),)),
    ),
    refusal("qcow2-refcount-table-clusters-0", QCOW2, F("a.qcow2", "refcount_table_clusters", 0)),
    refusal("qcow2-snapshots-offset-unaligned", QCOW2, F("a.qcow2", "snapshots_offset", 0x10001)),
    refusal(
        "qcow2-compression-type-2",
        QCOW2,
        F("a.qcow2", "compression_type", 2),
        F("a.qcow2", "incompatible_features", 8, "|"),
    ),
    refusal("qcow2-extended-l2-c512", QCOW2_512, F("a.qcow2", "incompatible_features", 1 << 4, "|")),
    refusal("qcow2-l1-too-small", QCOW2, F("a.qcow2", "l1_size", 0)),
    refusal("qed-cluster-size-3000", QED, Q("a.qed", "cluster_size", 3000)),
    refusal("qed-cluster-size-128M", QED, Q("a.qed", "cluster_size", 128 << 20)),
    refusal("qed-table-size-3", QED, Q("a.qed", "table_size", 3)),
    refusal("qed-table-size-32", QED, Q("a.qed", "table_size", 32)),
    refusal("qed-image-size-unaligned", QED, Q("a.qed", "image_size", (1 << 20) + 100)),
    refusal("qed-unknown-feature-bit", QED, Q("a.qed", "features", 1 << 3, "|")),
    # qed_max_image_size wraps to 0 in 64 bits: any size above 0 is too large.
    *(
        refusal(
            f"qed-c{cluster >> 20}M-t{table}-max-size-wraps",
            QED,
            Q("a.qed", "cluster_size", cluster),
            Q("a.qed", "table_size", table),
            Q("a.qed", "l1_table_offset", cluster),
            qc.Truncate("a.qed", (1 + table) * cluster),
        )
        for cluster, table in ((4 << 20, 4), (2 << 20, 16), (64 << 20, 2))
    ),
    refusal("qed-l1-past-whole-sectors", QED, qc.Truncate("a.qed", 5 * 65536 - 512)),
    refusal(
        "qed-backing-name-past-header",
        QED,
        Q("a.qed", "features", 1, "|"),
        Q("a.qed", "backing_filename_offset", 0x10000 - 4),
        Q("a.qed", "backing_filename_size", 16),
    ),
]


@pytest.mark.parametrize("case", REFUSALS, ids=str)
def test_refusal(case: qc.Case, workdir: Path, imgchain: Any) -> None:
    top = qc.build_case(case, workdir)
    want = qemu(["info", "--output=json", top], workdir)
    got = imgchain(["info", "--output=json", top])
    both = f"\nqemu-img (rc {want.rc}): {want.err!r}\nimgchain (rc {got.rc}): {got.err!r}"
    assert want.rc not in (0, None), "qemu-img accepted the image: the recipe is wrong" + both
    assert got.rc == 1, "imgchain did not exit 1" + both
    assert got.out == b"", f"imgchain wrote to stdout: {got.out[:200]!r}" + both
    lines = got.err.splitlines()
    assert len(lines) == 1, "imgchain's stderr is not exactly one line" + both
    assert lines[0].startswith("imgchain: "), both
    assert "Traceback" not in got.err, both


FIXTURES = Path(__file__).parent.parent / "fixtures"
DECLARED = [
    ("raw", "chain/top.qcow2"),
    ("qcow2", "chain/top.qcow2"),
    ("qed", "chain/over-raw.qed"),
    ("raw", "chain/over-raw.qed"),
    ("raw", "misc/snap.qcow2"),
    ("qcow2", "chain/base.raw"),
    ("qed", "misc/v2.qcow2"),
]


@pytest.mark.parametrize(("fmt", "image"), DECLARED, ids=[f"{f}:{i}" for f, i in DECLARED])
def test_declared_format_as_qemu_img(fmt: str, image: str, imgchain: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``-f``: the same JSON where qemu-img opens the image that way, a
    refusal where it does not."""
    monkeypatch.chdir(FIXTURES)
    want = qemu(["info", "-f", fmt, "--output=json", image], FIXTURES)
    got = imgchain(["info", "-f", fmt, "--output=json", image])
    if want.rc == 0:
        assert got.rc == 0, got.err
        assert got.out == want.out
    else:
        assert got.rc == cli.EXIT_FAIL
        assert got.err.startswith("imgchain: ") and got.err.count("\n") == 1, got.err
