"""Size strings as people write them in configs: ``"64M"``, ``"1.5G"``, ``"512"``, ``"25%"``,
``"auto"``.

Units are binary (``K`` = 1024) whether written ``K`` or ``KiB``: disk tools align to binary
units, and a silent decimal/binary mix-up shifts partitions. ``MB``-style suffixes are refused
with a hint rather than guessed at. Fractions are allowed as long as they come out as a whole
number of bytes (``1.5G`` is fine, ``0.3K`` is not).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from imgkit.errors import InputError

if TYPE_CHECKING:
    from fractions import Fraction  # imported where a fraction is parsed: start-up time

KiB = 1024
MiB = 1024 ** 2
GiB = 1024 ** 3
TiB = 1024 ** 4

_UNITS = {"": 1, "B": 1, "K": KiB, "M": MiB, "G": GiB, "T": TiB,
          "KIB": KiB, "MIB": MiB, "GIB": GiB, "TIB": TiB}
_NUMBER = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*%\s*$")

AUTO: Literal["auto"] = "auto"
GROW: Literal["grow"] = "grow"


@dataclass(frozen=True)
class Percent:
    """A share of some total (for partitions: of the whole disk), 0 < value <= 100."""

    value: Fraction

    def of(self, total: int) -> int:
        """The share of ``total`` in whole bytes, rounded down."""
        return int(total * self.value / 100)

    def __str__(self) -> str:
        return f"{float(self.value):g}%"


#: What a partition's ``size`` may be after parsing.
SizeSpec = int | Percent | Literal["auto"] | Literal["grow"]


def parse_size(value: str | int, *, what: str = "size") -> int:
    """Bytes from ``value`` (an int, or a string such as ``"64M"``, ``"1.5GiB"``, ``"512"``).

    ``what`` names the setting in the error message (e.g. ``"size of partition 'root'"``).
    """
    if isinstance(value, bool):
        raise InputError(f"{what}: expected a size such as '64M', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise InputError(f"{what}: expected a size of 0 or more bytes, got {value}")
        return value
    if not isinstance(value, str):
        raise InputError(f"{what}: expected a size such as '64M', got {value!r}")
    m = _NUMBER.match(value)
    if not m:
        raise InputError(
            f"{what}: expected a size such as '512', '64M', '1.5G' or '2GiB', got {value!r}",
            hint="sizes are a number followed by an optional binary unit: K, M, G, T "
                 "(or KiB, MiB, GiB, TiB)")
    number, unit = m.group(1), m.group(2).upper()
    if unit not in _UNITS:
        hint = "units are binary: K, M, G, T or KiB, MiB, GiB, TiB"
        if unit in ("KB", "MB", "GB", "TB"):
            hint = f"write {unit[0]} or {unit[0]}iB (binary, 1{unit[0]} = {_UNITS[unit[0]]} bytes)"
        raise InputError(f"{what}: unknown unit {m.group(2)!r} in {value!r}", hint=hint)
    if number.isdigit():
        return int(number) * _UNITS[unit]
    from fractions import Fraction

    exact = Fraction(number) * _UNITS[unit]
    if exact.denominator != 1:
        raise InputError(f"{what}: {value!r} is not a whole number of bytes ({float(exact):g})",
                         hint="use a smaller unit, e.g. '1536K' instead of '1.5M'")
    return int(exact)


def parse_percent(value: str, *, what: str = "size") -> Percent:
    """A :class:`Percent` from ``"25%"``; 0 and more than 100 are refused."""
    m = _PERCENT.match(value) if isinstance(value, str) else None
    if not m:
        raise InputError(f"{what}: expected a percentage such as '25%', got {value!r}")
    from fractions import Fraction

    p = Fraction(m.group(1))
    if not 0 < p <= 100:
        raise InputError(f"{what}: expected a percentage above 0% and at most 100%, got {value!r}")
    return Percent(p)


def parse_size_spec(value: str | int | Percent, *, what: str = "size",
                    allow: tuple[str, ...] = ("percent", "auto", "grow")) -> SizeSpec:
    """Parse a partition-style size: bytes, ``"N%"``, ``"auto"`` or ``"grow"``.

    ``allow`` limits which of the non-byte forms are accepted in this place.
    """
    if isinstance(value, Percent):
        if "percent" not in allow:
            raise InputError(f"{what}: a percentage is not allowed here, got {value}")
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in (AUTO, GROW):
            if word not in allow:
                raise InputError(f"{what}: {word!r} is not allowed here",
                                 hint="give a size such as '64M'")
            return AUTO if word == AUTO else GROW
        if word.endswith("%"):
            if "percent" not in allow:
                raise InputError(f"{what}: a percentage is not allowed here, got {value!r}")
            return parse_percent(word, what=what)
    try:
        return parse_size(value, what=what)
    except InputError as exc:
        names = {"percent": "'25%'", "auto": "'auto'", "grow": "'grow'"}
        forms = ["'64M'"] + [names[a] for a in allow]
        raise InputError(f"{exc} (accepted forms: {', '.join(forms)})", hint=exc.hint) from None


_BINARY_UNITS = (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB))


def format_size(n: int) -> str:
    """Bytes as a human string that never hides a byte: a whole unit when exact (``"64 MiB"``),
    else the byte count with the rounded size beside it (``"4,193,792 bytes (4.00 MiB)"``,
    ``"1,536 bytes (1.50 KiB)"``, ``"100 bytes"``)."""
    for unit, factor in _BINARY_UNITS:
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit}"
    for unit, factor in _BINARY_UNITS:
        if n >= factor:
            return f"{n:,} bytes ({n / factor:.2f} {unit})"
    return f"{n:,} bytes"


def format_size_and_bytes(n: int) -> str:
    """:func:`format_size`, followed by the byte count when the short form does not show it
    (``"8 MiB (8388608 bytes)"``, ``"4,193,792 bytes (4.00 MiB)"``): for messages comparing
    two sizes, where the exact numbers matter."""
    text = format_size(n)
    return text if "bytes" in text else f"{text} ({n} bytes)"
