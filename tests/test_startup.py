"""Start-up: the command line defers pdb and inspect (imgchain._deferred),
which construct imports but imgchain never uses, and they still work when
something does use them; only the command being run gets its options built."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

FIXTURES = Path(__file__).parent.parent / "fixtures"


def run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_commands_never_import_pdb_or_inspect() -> None:
    out = run_python(
        f"""
        import os, sys
        from imgchain.cli import main
        real = os.dup(1)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        for args in (["info", "--backing-chain", {str(FIXTURES / "chain/top.qcow2")!r}],
                     ["xml", {str(FIXTURES / "chain/top.qcow2")!r}],
                     ["audit", "--output", "json", {str(FIXTURES)!r}]):
            main(args)
        sys.stdout.flush()
        os.dup2(real, 1)
        loaded = [m for m in ("pdb", "bdb", "inspect", "dis", "ast") if type(sys.modules.get(m)).__name__ == "module"]
        print(sorted(loaded))
        """
    )
    assert out.strip() == "[]"


def test_deferred_modules_work_when_used() -> None:
    out = run_python(
        """
        import imgchain.cli, construct, sys, importlib.util
        assert "bdb" not in sys.modules
        assert importlib.util.find_spec("inspect").origin.endswith("inspect.py")
        from dataclasses import dataclass

        @dataclass
        class Point:
            x: int

        import inspect, pdb
        from inspect import signature
        print(Point.__doc__, signature(len), pdb.Pdb.__name__, construct.debug.pdb.Pdb is pdb.Pdb)
        """
    )
    assert out.split() == ["Point(x:", "int)", "(obj,", "/)", "Pdb", "True"]


def test_the_library_alone_defers_nothing() -> None:
    assert run_python("import imgchain, imgchain.audit, sys; print(type(sys.modules.get('inspect')).__name__)") in (
        "module\n",
        "NoneType\n",
    )


def test_only_the_command_run_has_its_options_built() -> None:
    from imgchain.cli import build_parser

    def options(parser, command):  # type: ignore[no-untyped-def]
        sub = next(a for a in parser._actions if a.dest == "command")
        return {o for a in sub.choices[command]._actions for o in a.option_strings}

    lean = build_parser("info")
    assert "--backing-chain" in options(lean, "info")
    assert options(lean, "audit") == {"-h", "--help"}
    full = build_parser()
    assert {"--jobs", "--standalone"} <= options(full, "audit")
