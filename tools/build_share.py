#!/usr/bin/env python3
"""Generate the man page and the bash and zsh completion from the parser.

    python3 tools/build_share.py OUTDIR

writes, from ``imgchain.cli.build_parser()`` (never by hand):

    OUTDIR/man/man1/imgchain.1                      argparse-manpage
    OUTDIR/bash-completion/completions/imgchain     shtab
    OUTDIR/zsh/site-functions/_imgchain             shtab

``setup.py`` runs it when a wheel is built, and the wheel installs OUTDIR's
files under ``share/`` (data files).  Both tools are build requirements
(``[build-system] requires``), never run-time dependencies.  The man page's
date is ``SOURCE_DATE_EPOCH``'s when it is set (reproducible builds).
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

#: Where each file goes, relative to OUTDIR (and to the wheel's share/).
MAN_PAGE = "man/man1/imgchain.1"
BASH_COMPLETION = "bash-completion/completions/imgchain"
ZSH_COMPLETION = "zsh/site-functions/_imgchain"
FILES = (MAN_PAGE, BASH_COMPLETION, ZSH_COMPLETION)


def _parser() -> argparse.ArgumentParser:
    """The command's parser, from this source tree (the build may run where
    imgchain is not installed; importing the CLI needs none of its
    dependencies), with what the completion should offer for each
    argument: files for images and XML, folders for --root."""
    import shtab

    _source_tree()
    from imgchain.cli import build_parser

    parser = build_parser()
    for action in _actions(parser):
        if action.metavar in ("IMAGE", "PATH", "DOMAIN.xml"):
            action.complete = shtab.FILE  # type: ignore[attr-defined]
        elif action.metavar == "DIR":
            action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
    return parser


def _source_tree() -> None:
    """Import imgchain from this source tree."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def _actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    found = []
    for action in parser._actions:
        found.append(action)
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found.extend(_actions(sub))
    return found


def _exit_status() -> str:
    """The EXIT STATUS section, from the exit codes in imgchain.cli's docstring."""
    _source_tree()
    import imgchain.cli

    doc = imgchain.cli.__doc__ or ""
    codes = re.findall(r"^\* (\d): (.*?)(?=^\* \d:|^\S|\Z)", doc, re.M | re.S)
    if [c for c, _ in codes] != ["0", "1", "2"]:
        raise SystemExit("build_share.py: imgchain.cli's docstring no longer lists exit codes 0, 1 and 2")
    return "\n".join(f".TP\n.B {code}\n{_roff(' '.join(text.split()))}" for code, text in codes)


def _roff(text: str) -> str:
    text = text.replace("\\", "\\\\").replace("-", "\\-").replace("``", "")
    return "\\&" + text if text[:1] in (".", "'") else text


def man_page() -> str:
    from argparse_manpage.manpage import Manpage

    _source_tree()
    from imgchain import __version__

    page = Manpage(
        _parser(),
        _data={
            "project_name": "imgchain",
            "version": __version__,
            "manual_title": "imgchain manual",
            "description": "offline disk image prober and backing-chain resolver",
        },
    )
    page.add_section("exit status", ">", _exit_status())
    page.add_section(
        "see also",
        ">",
        ".BR qemu\\-img (1),\n.BR virsh (1);\nthe README of imgchain, for examples, the finding codes and "
        "where imgchain differs from qemu\\-img.",
    )
    return str(page)


def completion(shell: str) -> str:
    import shtab

    return str(shtab.complete(_parser(), shell=shell))


def write(outdir: pathlib.Path) -> list[pathlib.Path]:
    """Write the three files under ``outdir``; their paths."""
    texts = {MAN_PAGE: man_page(), BASH_COMPLETION: completion("bash"), ZSH_COMPLETION: completion("zsh")}
    written = []
    for name, text in texts.items():
        path = outdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python3 tools/build_share.py OUTDIR", file=sys.stderr)
        return 2
    for path in write(pathlib.Path(argv[1])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
