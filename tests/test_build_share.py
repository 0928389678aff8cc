"""The man page and the bash and zsh completion: generated from the parser
(tools/build_share.py, by argparse-manpage and shtab), and installed by the
wheel under share/.

The first tests generate them in process; the ``slow`` one builds an sdist
and a wheel from it (``python -m build``, in a copy of the tree) and checks
what the wheel carries.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import runpy
import shutil
import subprocess
import sys
import zipfile

import pytest

from imgchain.cli import build_parser

ROOT = pathlib.Path(__file__).parent.parent
TOOL = runpy.run_path(str(ROOT / "tools" / "build_share.py"))

pytest.importorskip("argparse_manpage", reason="argparse-manpage is a build requirement (pip install -e '.[test]')")
pytest.importorskip("shtab", reason="shtab is a build requirement (pip install -e '.[test]')")


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def check_man_page(text: str) -> None:
    assert text.startswith('.TH IMGCHAIN "1" ')
    plain = text.replace("\\-", "-")
    for name, parser in commands().items():
        assert f".SH COMMAND \\fI\\,'imgchain {name}'\\/\\fR" in plain, name
        section = plain[plain.index(f"'imgchain {name}'") :]
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):  # (-h is left out of the options, as is usual)
                continue
            for option in action.option_strings:
                assert re.search(rf"\\fB{re.escape(option)}\\fR", section), f"{name} {option}"
            if not action.option_strings:
                assert f"\\fB{action.metavar}\\fR" in section, f"{name} {action.metavar}"
    assert "\\fB--version\\fR" in plain
    exit_status = plain[plain.index(".SH EXIT STATUS") :]
    assert [m for m in re.findall(r"^\.B (\d)$", exit_status, re.M)] == ["0", "1", "2"]


def complete(script: pathlib.Path, *words: str) -> list[str]:
    """What bash offers for the last word of ``imgchain WORDS...``."""
    line = " ".join(("imgchain", *words))
    program = (
        f"source {script}\n"
        f"COMP_WORDS=(imgchain {' '.join(words)}); COMP_CWORD={len(words)}; "
        f"COMP_LINE='{line}'; COMP_POINT={len(line)}\n"
        "_shtab_imgchain imgchain\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(["bash", "--norc", "-c", program], capture_output=True, text=True, check=True)
    return done.stdout.split()


def check_bash(script: pathlib.Path) -> None:
    done = subprocess.run(
        ["bash", "--norc", "-c", f"source {script}; complete -p imgchain"], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip().endswith("-F _shtab_imgchain imgchain"), done.stdout
    assert sorted(complete(script, "")) == ["audit", "info", "xml"]
    assert sorted(complete(script, "--")) == ["--help", "--version"]
    assert complete(script, "au") == ["audit"]
    assert complete(script, "audit", "--gr") == ["--graph"]
    assert complete(script, "audit", "--graph", "") == ["tree", "dot"]
    assert "--backing-chain" in complete(script, "info", "--")


def check_zsh(text: str, script: pathlib.Path) -> None:
    assert text.startswith("#compdef imgchain\n")
    for name, parser in commands().items():
        assert f"_shtab_imgchain_{name}_options=(" in text, name
        for action in parser._actions:
            for option in action.option_strings:
                assert option in text, f"{name} {option}"
    if shutil.which("zsh"):
        subprocess.run(["zsh", "-n", str(script)], check=True)


def test_generated_from_the_parser(tmp_path):
    written = TOOL["write"](tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in written] == list(TOOL["FILES"])
    check_man_page((tmp_path / TOOL["MAN_PAGE"]).read_text())
    check_bash(tmp_path / TOOL["BASH_COMPLETION"])
    zsh = tmp_path / TOOL["ZSH_COMPLETION"]
    check_zsh(zsh.read_text(), zsh)


def test_the_completion_offers_files_and_folders(tmp_path):
    TOOL["write"](tmp_path)
    zsh = (tmp_path / TOOL["ZSH_COMPLETION"]).read_text()
    assert re.search(r'"\*--root\[.*\]:DIR:_files -/"', zsh)
    assert re.search(r'":IMAGE:_files"', zsh)
    bash = (tmp_path / TOOL["BASH_COMPLETION"]).read_text()
    assert "_shtab_imgchain_info_pos_0_COMPGEN=_shtab_compgen_files" in bash
    assert "_shtab_imgchain_audit___root_COMPGEN=_shtab_compgen_dirs" in bash


def test_the_man_page_date_is_reproducible(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    assert '"1970\\-01\\-01"' in TOOL["man_page"]().split("\n")[0]


def test_the_build_requires_the_tools():
    text = (ROOT / "pyproject.toml").read_text()
    requires = re.search(r"^\[build-system\]\n(?:#.*\n)*requires = \[(.*?)\]$", text, re.M | re.S)
    assert requires is not None
    assert '"argparse-manpage' in requires.group(1) and '"shtab' in requires.group(1)


def _copy_tree(dest: pathlib.Path) -> pathlib.Path:
    ignore = shutil.ignore_patterns(
        ".git", ".venv", ".bench", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
    )
    shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True)
    return dest


@pytest.mark.slow
def test_the_wheel_installs_the_man_page_and_completion(tmp_path):
    pytest.importorskip("build", reason="python -m build is in the test extra")
    src = _copy_tree(tmp_path / "src")
    out = tmp_path / "dist"
    # An sdist, then the wheel from the unpacked sdist: so the sdist must carry the tool too.
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(src)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        data = "imgchain-0.1.0.data/data/share/"
        for name in TOOL["FILES"]:
            assert data + name in names, sorted(names)
        z.extractall(tmp_path / "wheel")
    share = tmp_path / "wheel" / data
    check_man_page((share / TOOL["MAN_PAGE"]).read_text())
    check_bash(share / TOOL["BASH_COMPLETION"])
    check_zsh((share / TOOL["ZSH_COMPLETION"]).read_text(), share / TOOL["ZSH_COMPLETION"])
