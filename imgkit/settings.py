"""Config keys declared as data: one :func:`setting` per key drives parsing, errors and docs.

A config table is a frozen dataclass whose fields are declared with :func:`setting` (its value
type, default, choices and help). :func:`parse_table` turns a TOML table into that dataclass,
rejecting unknown keys, wrong types and bad choices with a message naming the file, the table
and the key; :func:`reference_rows` lists the same declarations for the README. Choices may be
a callable, so a table's owner (the compression module, the filesystem table, the boot path
table) supplies them at the moment they are checked, and nothing is imported to declare them.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from imgkit.errors import InputError

_META = "imgkit.setting"
REF_KINDS = ("initramfs", "uki", "fs", "kernel", "file")


def is_ref(value: str) -> bool:
    """A reference to another artifact (``kernel``, ``uki:main``...), not a host path."""
    return value == "kernel" or value.split(":", 1)[0] in REF_KINDS and ":" in value


@dataclass(frozen=True)
class Where:
    """Where a table sits: the config file, the table's name as the user writes it, and the
    directory relative host paths are resolved against."""

    file: str
    table: str
    base_dir: str

    def sub(self, name: str) -> Where:
        table = name if self.table == "top level" else f"{self.table}.{name}"
        return Where(self.file, table, self.base_dir)

    def error(self, key: str, expected: str, value: Any, hint: str | None = None) -> InputError:
        return InputError(f"{self.file}: {self.table}.{key}: expected {expected}, "
                          f"got {type(value).__name__} {value!r}", hint=hint)

    def resolve(self, path: str) -> str:
        """A host path relative to the config file, made absolute; references stay as given."""
        if os.path.isabs(path) or is_ref(path):
            return path
        transport, sep, rest = path.partition(":")
        if sep:
            from imgkit.sources.oci import TRANSPORTS

            if transport in TRANSPORTS:   # oci:DIR[:TAG]: the path is DIR
                return f"{transport}:{self.resolve(rest)}"
        return os.path.normpath(os.path.join(self.base_dir, path))


@dataclass(frozen=True)
class ValueType:
    """How one TOML value is checked and converted; ``name`` is what errors and the reference
    call it."""

    name: str
    accepts: tuple[type, ...]
    convert: Callable[[Any, Where, str, bool], Any] = lambda v, where, key, path: v
    #: What of the converted value is checked against the setting's choices.
    choice_of: Callable[[Any], Any] = lambda v: v
    #: The dataclass of a nested table (for the reference).
    nested: type | None = None

    def parse(self, value: Any, where: Where, key: str, path: bool) -> Any:
        if not isinstance(value, self.accepts) or (bool not in self.accepts and isinstance(value, bool)):
            raise where.error(key, self.name, value)
        return self.convert(value, where, key, path)


def _string(value: str, where: Where, key: str, path: bool) -> str:
    return where.resolve(value) if path else value


def _strings(value: Any, where: Where, key: str, path: bool) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not all(isinstance(v, str) for v in items):
        raise where.error(key, "a list of strings", value)
    return tuple(where.resolve(v) if path else v for v in items)


def _string_map(value: dict, where: Where, key: str, path: bool) -> tuple[tuple[str, str], ...]:
    out = []
    for k, v in value.items():
        if not isinstance(v, str):
            raise where.error(f"{key}.{k}", "a host path or reference string", v)
        out.append((k, where.resolve(v) if path else v))
    return tuple(out)


def _output_name(value: str, where: Where, key: str, path: bool) -> str:
    """A file name inside the output directory (``-O``), normalized: an output that could
    land outside it (absolute, or through ``..``) is refused before anything is built."""
    parts = value.replace("\\", "/").split("/")
    if not value or value.endswith("/") or os.path.isabs(value) or ".." in parts \
            or any(c in value for c in "\0\n"):
        raise where.error(key, "a file name inside the output directory (no absolute path, "
                               "no '..', not a directory)", value,
                          hint="outputs are written under -O; name the file relative to it, "
                               "e.g. 'disk.img' or 'images/disk.img'")
    name = os.path.normpath(value)
    if name == ".":
        raise where.error(key, "a file name inside the output directory", value)
    return name


STR = ValueType("str", (str,), _string)
OUTPUT_NAME = ValueType("str", (str,), _output_name)
INT = ValueType("int", (int,))
BOOL = ValueType("bool", (bool,))
STR_OR_INT = ValueType("str or int", (str, int), lambda v, where, key, path: v)
SIZE = ValueType("size", (str, int), lambda v, where, key, path: str(v))
STRINGS = ValueType("list of str", (str, list), _strings)
STRING_MAP = ValueType("table of str", (dict,), _string_map)


def table_of(cls: type) -> ValueType:
    """A nested table parsed into the dataclass ``cls``."""
    return ValueType("table", (dict,), lambda v, where, key, path: parse_table(cls, v, where.sub(key)),
                     nested=cls)


def tables_of(cls: type) -> ValueType:
    """A list of tables, each parsed into the dataclass ``cls``."""
    def convert(value: list, where: Where, key: str, path: bool) -> tuple:
        return tuple(parse_table(cls, item, where.sub(f"{key}[{i}]")) for i, item in enumerate(value))
    return ValueType("list of tables", (list,), convert, nested=cls)


Choices = Sequence[Any] | Callable[[], Sequence[Any]]


@dataclass(frozen=True)
class Setting:
    """One config key: everything the parser, the error messages and the README need."""

    type: ValueType
    help: str
    choices: Choices | None = None
    required: bool = False
    path: bool = False  # a host path (relative to the config file) or a reference
    key: str | None = None  # the TOML key, when it differs from the field name

    def allowed(self) -> tuple[Any, ...] | None:
        if self.choices is None:
            return None
        return tuple(self.choices() if callable(self.choices) else self.choices)


def setting(type: ValueType, default: Any = dataclasses.MISSING, *, help: str,
            choices: Choices | None = None, path: bool = False, key: str | None = None,
            default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field that is a config key (no default: the key is required)."""
    required = default is dataclasses.MISSING and default_factory is dataclasses.MISSING
    meta = {_META: Setting(type, help, choices, required, path, key)}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def settings_of(cls: type) -> Iterator[tuple[str, Setting, dataclasses.Field]]:
    """``(key, setting, field)`` for every config key of the dataclass ``cls``, in order."""
    for f in dataclasses.fields(cls):
        s = f.metadata.get(_META)
        if s is not None:
            yield s.key or f.name, s, f


def parse_values(cls: type, data: dict, where: Where, known: Sequence[str] = ()) -> dict[str, Any]:
    """The field values of ``cls`` found in ``data``: checked, converted, defaults left out.

    Keys neither of ``cls`` nor in ``known`` (which the caller parses itself) are an error
    listing the keys allowed there.
    """
    if not isinstance(data, dict):
        raise InputError(f"{where.file}: [{where.table}] must be a table, got {type(data).__name__}")
    values: dict[str, Any] = {}
    keys = list(known)
    for key, s, f in settings_of(cls):
        keys.append(key)
        if key not in data:
            if s.required:
                raise InputError(f"{where.file}: [{where.table}] needs the key {key!r}",
                                 hint=f"{key}: {s.help}")
            continue
        value = s.type.parse(data[key], where, key, s.path)
        allowed = s.allowed()
        if allowed is not None and s.type.choice_of(value) not in allowed:
            listed = ", ".join(str(a) for a in allowed) or "none registered"
            raise InputError(f"{where.file}: {where.table}.{key}: expected one of {listed}, "
                             f"got {s.type.choice_of(value)!r}", hint=f"{key}: {s.help}; allowed: {listed}")
        values[f.name] = value
    unknown = [k for k in data if k not in keys]
    if unknown:
        raise InputError(f"{where.file}: unknown key {unknown[0]!r} in [{where.table}]",
                         hint=f"keys allowed there: {', '.join(sorted(keys))}")
    return values


def parse_table(cls: type, data: Any, where: Where, **extra: Any) -> Any:
    """The dataclass ``cls`` from the TOML table ``data`` (``extra``: fields that are not keys)."""
    return cls(**parse_values(cls, data, where), **extra)


# -- the reference ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One line of the README's config reference."""

    table: str
    key: str
    type: str
    default: str
    choices: str
    help: str
    when: str = ""  # the condition under which the key exists (type = "vfat")


def _show(value: Any) -> str:
    if value is None or value == ():
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value}`"


def reference_rows(table: str, cls: type) -> list[Row]:
    """One row per key of ``cls`` under the TOML table name ``table``."""
    rows = []
    for key, s, f in settings_of(cls):
        if s.required:
            default = "required"
        elif f.default is not dataclasses.MISSING:
            default = _show(f.default)
        else:
            default = ""
        allowed = s.allowed()
        choices = ", ".join(_show(a) for a in allowed) if allowed else ""
        rows.append(Row(table, key, s.type.name, default, choices, s.help))
    return rows


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| table | key | type | default | choices | help |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        table = f"`[{r.table}]`" if r.table else "top level"
        if r.when:
            table += f" ({r.when})"
        cells = [table, f"`{r.key}`", r.type, r.default,
                 r.choices, r.help]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
