"""Our output against qemu-img's, saved beside the fixtures by
fixtures/rebuild.sh: runs without qemu installed.

``actual-size`` (``disk size`` in text) depends on the file system a clone
lands on, so it is checked against the file's own ``st_blocks`` instead of
the saved value; everything else must be identical to the byte.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import time

import pytest

from imgchain.cli import main

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures"
GOLDEN = sorted(p.relative_to(FIXTURES).with_suffix("") for p in FIXTURES.rglob("*.json"))


def run(capsys, *args: str) -> str:
    assert main(list(args)) == 0
    out = capsys.readouterr()
    assert out.err == ""
    return out.out


def without_sizes(text: str) -> str:
    text = re.sub(r'"actual-size": \d+', '"actual-size": N', text)
    return re.sub(r"(?m)^disk size: .*$", "disk size: N", text)


@pytest.fixture(autouse=True)
def _in_fixtures(monkeypatch):
    monkeypatch.chdir(FIXTURES)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


def test_there_are_golden_files():
    assert len(GOLDEN) >= 8


@pytest.mark.parametrize("top", GOLDEN, ids=str)
def test_json_matches_qemu_img(capsys, top):
    golden_text = (FIXTURES / f"{top}.json").read_text()
    golden = json.loads(golden_text)
    for layer in golden:
        layer["actual-size"] = os.stat(layer["filename"]).st_blocks * 512
    ours = run(capsys, "info", "--backing-chain", "--output=json", str(top))
    assert json.loads(ours) == golden
    assert without_sizes(ours) == without_sizes(golden_text)


@pytest.mark.parametrize("top", GOLDEN, ids=str)
def test_human_matches_qemu_img(capsys, top):
    golden = (FIXTURES / f"{top}.txt").read_text()
    ours = run(capsys, "info", "--backing-chain", str(top))
    assert without_sizes(ours) == without_sizes(golden)
