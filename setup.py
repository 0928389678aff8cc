"""The one thing pyproject.toml cannot say: generated data files.

When a wheel is built (or an editable install made), the man page and the
bash and zsh completion are generated from the command's own parser by
tools/build_share.py (argparse-manpage and shtab, both build requirements)
into build/share/, and installed from there as data files:

    share/man/man1/imgchain.1
    share/bash-completion/completions/imgchain
    share/zsh/site-functions/_imgchain

(relative to the environment: /usr/local, ~/.local or a venv).  Everything
else is declared in pyproject.toml.
"""

from __future__ import annotations

import pathlib
import runpy

from setuptools import setup

# (setuptools provides distutils, on every Python; it has no install_data of its own)
from distutils.command.install_data import install_data  # isort: skip

HERE = pathlib.Path(__file__).resolve().parent
SHARE = "build/share"  # where the files are generated, relative to this folder
TOOL = runpy.run_path(str(HERE / "tools" / "build_share.py"))


class install_generated_data(install_data):
    """install_data, generating the files first (so that they are always made
    from the parser being installed)."""

    def run(self) -> None:
        TOOL["write"](HERE / SHARE)
        super().run()


setup(
    cmdclass={"install_data": install_generated_data},
    data_files=[(str(pathlib.PurePosixPath("share", name).parent), [f"{SHARE}/{name}"]) for name in TOOL["FILES"]],
)
