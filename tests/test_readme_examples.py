"""Every example in the README runs, and prints what the README shows.

The README's examples are its ```console blocks: a line starting with ``$ ``
is a command, the lines under it (up to the next command) what it prints,
stdout and stderr together as a terminal shows them.  Each block runs as one
bash script in a folder built by ``examples/build.py`` (so ``cd`` and
``echo $?`` work as in a shell), with ``imgchain`` on PATH running this
checkout (``python -m imgchain``).

What may differ:

* the folder: the README shows it as ``/tmp/demo``, the test builds it in a
  temporary folder;
* ``disk size`` and ``actual-size``, which depend on the file system;
* a line ``...`` in the README stands for lines left out (any number).
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
from typing import NamedTuple

import pytest

ROOT = pathlib.Path(__file__).parent.parent
README = ROOT / "README.md"
#: The folder the README's outputs show, where `python3 examples/build.py /tmp/demo` builds the examples.
SHOWN = "/tmp/demo"

#: examples/build.py makes the images with qemu-img.
needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")


class Command(NamedTuple):
    line: int  # the README line of the command
    command: str
    shown: str  # the output the README shows


_FENCE = re.compile(r"^( *)```(\S*)\s*$")


def blocks(text: str) -> list[tuple[int, str, list[str]]]:
    """Each fenced block: (line of its fence, language, its lines without the fence's indent)."""
    found = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        indent, lang, start = len(m.group(1)), m.group(2), i + 1
        i += 1
        body = []
        while not re.match(r"^ *```\s*$", lines[i]):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        found.append((start, lang, body))
        i += 1
    return found


def console_blocks(text: str) -> list[list[Command]]:
    result = []
    for start, lang, body in blocks(text):
        if lang != "console":
            continue
        commands: list[Command] = []
        for n, line in enumerate(body):
            if line.startswith("$ "):
                commands.append(Command(start + n + 1, line[2:], ""))
            else:
                assert commands, f"README line {start + n + 1}: output before any command in a console block"
                last = commands[-1]
                commands[-1] = last._replace(shown=last.shown + line + "\n")
        result.append(commands)
    return result


BLOCKS = console_blocks(README.read_text())


def normalise(text: str) -> str:
    text = re.sub(r"(?m)^disk size: .*$", "disk size: <size>", text)
    return re.sub(r'"actual-size": \d+', '"actual-size": <size>', text)


def pattern(shown: str) -> re.Pattern[str]:
    """The shown output as a pattern: each line itself, a line `...` any lines."""
    parts = []
    for line in shown.split("\n")[:-1]:
        parts.append(r"(?:[^\n]*\n)*?" if line == "..." else re.escape(line) + r"\n")
    return re.compile("".join(parts))


def run_block(commands: list[Command], demo: pathlib.Path, shim: pathlib.Path) -> list[str]:
    """Run a block's commands in one bash, in the demo folder; each one's output."""
    script = [f"cd {shlex.quote(str(demo))}"]
    for c in commands:
        # (the subshell's exit status is the command's, for a following `echo $?`)
        script.append(f"{{ {c.command}\n}} 2>&1; __rc=$?; printf '\\0'; (exit $__rc)")
    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    env.pop("COLUMNS", None)
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", "\n".join(script)],
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.stderr == b"", done.stderr
    outputs = done.stdout.decode("utf-8", "surrogateescape").split("\0")
    assert len(outputs) == len(commands) + 1 and outputs[-1] == "", outputs
    return outputs[:-1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("readme") / "demo"
    subprocess.run([sys.executable, str(ROOT / "examples" / "build.py"), str(folder)], check=True)
    return folder.resolve()


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A folder holding an `imgchain` that runs this checkout."""
    folder = tmp_path_factory.mktemp("bin")
    exe = folder / "imgchain"
    exe.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m imgchain "$@"\n')
    exe.chmod(0o755)
    return folder


@pytest.mark.parametrize("commands", BLOCKS, ids=[f"line{b[0].line}" for b in BLOCKS])
@pytest.mark.qemu
@needs_qemu_img
def test_the_readme_example_prints_what_it_shows(commands, demo, shim):
    outputs = run_block(commands, demo, shim)
    for c, out in zip(commands, outputs, strict=True):
        got = normalise(out.replace(str(demo), SHOWN))
        if not pattern(normalise(c.shown)).fullmatch(got):
            assert got == normalise(c.shown), f"README line {c.line}: `{c.command}` prints otherwise"


def test_the_examples_are_found():
    """The parser finds the README's examples: every command of each subcommand."""
    commands = [c.command for block in BLOCKS for c in block]
    assert len(commands) >= 20, commands
    for sub in ("info", "xml", "audit"):
        assert any(c.startswith(f"imgchain {sub} ") for c in commands), sub
    assert all(c.shown or c.command.startswith("cd ") for block in BLOCKS for c in block)


def test_no_example_is_left_out():
    """A `$ imgchain` line outside a console block would not be checked."""
    for start, lang, body in blocks(README.read_text()):
        if lang != "console":
            assert not any(line.startswith("$ ") for line in body), f"README line {start}: use ```console"


def test_the_pattern_matches_what_it_should():
    assert pattern("a\n...\nd\n").fullmatch("a\nb\nc\nd\n")
    assert pattern("a\n...\nd\n").fullmatch("a\nd\n")
    assert not pattern("a\nd\n").fullmatch("a\nb\nd\n")
    assert not pattern("a\n...\nd\n").fullmatch("a\nb\n")
    assert normalise("disk size: 4 KiB\n") == normalise("disk size: 12 KiB\n")
