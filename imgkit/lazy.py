"""Table entries whose implementation is imported the first time it is used.

The filesystem table and the boot path table list their built-in entries by name and by where
the class is (``"module:Class"``), with the few facts their ``names()`` filter on, so that
checking a name or listing the choices imports no format or bootloader code.
"""
from __future__ import annotations

import importlib
from typing import Any, ClassVar


class LazyEntry:
    """A class not imported yet and the facts about it a table needs before importing it;
    :meth:`load` imports it, makes the instance, and checks it states the same facts."""

    __slots__ = ("name", "target")
    #: What the table calls its entries ("boot path"), for the error of a drifted fact.
    kind: ClassVar[str]
    facts: ClassVar[tuple[str, ...]]

    def __init__(self, name: str, target: str) -> None:
        self.name, self.target = name, target

    def load(self) -> Any:
        module, _, attr = self.target.partition(":")
        instance = getattr(importlib.import_module(module), attr)()
        differ = [f for f in ("name", *self.facts) if getattr(instance, f) != getattr(self, f)]
        if differ:
            raise RuntimeError(f"{self.kind} {self.name!r}: {self.target} says "
                               + ", ".join(f"{f}={getattr(instance, f)!r}" for f in differ)
                               + " but the table lists "
                               + ", ".join(f"{f}={getattr(self, f)!r}" for f in differ))
        return instance
