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


class LazyTable:
    """One registry of named entries, built-in ones loaded on first use: what the
    filesystem table and the boot path table share (``kind`` names an entry in errors,
    ``plural`` the list in the hint)."""

    def __init__(self, kind: str, plural: str, builtin: tuple[LazyEntry, ...]) -> None:
        self.kind, self.plural = kind, plural
        self.entries: dict[str, Any] = {e.name: e for e in builtin}

    def register(self, entry: Any) -> Any:
        if entry.name in self.entries:
            from imgkit.errors import InputError
            raise InputError(f"{self.kind} {entry.name!r} is already registered")
        self.entries[entry.name] = entry
        return entry

    def unregister(self, name: str) -> None:
        self.entries.pop(name, None)

    def get(self, name: str) -> Any:
        """The entry ``name``, its module imported on first use."""
        try:
            entry = self.entries[name]
        except KeyError:
            from imgkit.errors import InputError
            raise InputError(f"unknown {self.kind} {name!r}",
                             hint=f"registered {self.plural}: {', '.join(self.entries)}") from None
        if isinstance(entry, LazyEntry):
            entry = self.entries[name] = entry.load()
        return entry

    def loaded(self) -> tuple[Any, ...]:
        """Every entry, each module imported (for the reference)."""
        return tuple(self.get(n) for n in list(self.entries))
