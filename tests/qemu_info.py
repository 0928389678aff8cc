"""Helpers for the tests of the formats qemu probes besides qcow2/qed/raw:
run qemu-img 7.2 (the oracle), build images, and check that only our
errors escape a decoder."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from imgchain.errors import ImgChainError

QEMU = shutil.which("qemu-img")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-img is not installed")
_FLAKY_LUKS = "Unable to get accurate CPU usage"


def qemu_img(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run qemu-img; retry the LUKS PBKDF2 timing failure up to 30 times."""
    assert QEMU is not None
    for _ in range(30):
        done = subprocess.run([QEMU, *args], cwd=cwd, capture_output=True, text=True, check=False)
        if done.returncode == 0 or _FLAKY_LUKS not in done.stderr:
            break
    return done


def create(tmp: Path, fmt: str, name: str, size: str, *opts: str) -> bytes:
    r = qemu_img("create", "-q", "-f", fmt, *opts, name, size, cwd=tmp)
    assert r.returncode == 0, r.stderr
    return (tmp / name).read_bytes()


def info(path: Path, fmt: str | None = None) -> dict[str, Any] | str:
    """qemu-img info's JSON, or its error text when it refuses the file."""
    args = ["info", "--output=json", *(["-f", fmt] if fmt else []), path.name]
    r = qemu_img(*args, cwd=path.parent)
    return json.loads(r.stdout) if r.returncode == 0 else r.stderr.strip()


def probed(tmp: Path, data: bytes, name: str = "probe.img") -> str:
    """The format qemu-img probes ``data`` as ("raw" too), or its error."""
    path = tmp / name
    path.write_bytes(data)
    got = info(path)
    return got["format"] if isinstance(got, dict) else got


def only_our_errors(decode: Any, data: bytes) -> None:
    with contextlib.suppress(ImgChainError):
        decode(data)
