"""Standard modules imported at their first use, not at start-up.

``construct`` imports ``pdb`` and ``inspect`` (for ``construct.debug``,
which imgchain never uses), and with them ``bdb``, ``cmd``, ``code``,
``dis``, ``ast``, ``tokenize`` and more: a third of ``import construct``,
about 10 ms of every ``imgchain`` command (measured on 2 CPUs, Python 3.11).
:func:`defer` puts a stand-in for such a module in ``sys.modules``: the
``import`` statements find it, and the first attribute looked up on it
imports the real module, which every later look-up goes to.  So ``pdb``,
``breakpoint()`` and ``inspect`` work as ever, only later.

The command line defers these (``imgchain.cli``); importing the library
itself changes nothing.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types
from typing import Any

__all__ = ["defer"]


class _Deferred(types.ModuleType):
    """A module's stand-in: the real module is imported when an attribute
    is first looked up, and answers every look-up from then on."""

    def __getattr__(self, attr: str) -> Any:  # (only for what the stand-in lacks: all but the basics)
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]  # (so that the import below finds the real one)
        return getattr(importlib.import_module(name), attr)


def defer(*names: str) -> None:
    """Stand-ins for the modules ``names`` that are not imported yet (and exist)."""
    for name in names:
        if name in sys.modules:
            continue
        spec = importlib.machinery.PathFinder.find_spec(name)
        if spec is None:
            continue
        stand_in = _Deferred(name)
        stand_in.__spec__ = spec  # (importlib.util.find_spec and the import system look at it)
        sys.modules[name] = stand_in
