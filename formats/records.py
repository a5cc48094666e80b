"""Fixed-size little-endian records declared once as a field table, packed and parsed both ways.

A format declares each on-disk structure here as ``Record(name, size, fields)``: the writer
packs it and the reader parses it from the same table, and the size is asserted at import. It
is plain :mod:`struct` underneath: the FAT writer packs tens of thousands of directory entries
and ``construct`` costs tens of microseconds per build, and the magic sniffer reads boot
sectors and superblocks without paying the ~50 ms it takes to import ``construct``.
"""
from __future__ import annotations

import struct
from collections import namedtuple
from typing import Any


class Record:
    """One structure: ``fields`` is ``[(name, struct code), ...]`` in on-disk order.

    ``unpack`` returns a named tuple (attribute access by field name); ``pack`` takes the
    fields by name (missing ones are zero or empty). Fields named ``_`` are reserved bytes.
    """

    def __init__(self, name: str, size: int, fields: list[tuple[str, str]]) -> None:
        self.name = name
        self.struct = struct.Struct("<" + "".join(code for _, code in fields))
        if self.struct.size != size:
            raise AssertionError(f"{name}: declared {size} bytes, fields make {self.struct.size}")
        self.size = size
        names = [n if n != "_" else f"reserved{i}" for i, (n, _) in enumerate(fields)]
        self.fields = tuple(names)
        self._tuple = namedtuple(name, names)  # type: ignore[misc]
        self._zero = tuple(b"" if code.endswith("s") else 0 for _, code in fields)
        self._offsets = [struct.calcsize("<" + "".join(c for _, c in fields[:i]))
                         for i in range(len(fields))]

    def unpack(self, data: bytes | bytearray | memoryview, offset: int = 0) -> Any:
        """The record at ``offset`` of ``data`` (``struct.error`` when ``data`` is short)."""
        return self._tuple._make(self.struct.unpack_from(data, offset))

    def pack(self, **values: Any) -> bytes:
        unknown = set(values) - set(self.fields)
        if unknown:
            raise TypeError(f"{self.name} has no field {sorted(unknown)[0]!r}")
        return self.struct.pack(*(values.get(n, z) for n, z in zip(self.fields, self._zero, strict=False)))

    def offset_of(self, field: str) -> int:
        """Byte offset of ``field`` inside the record."""
        return self._offsets[self.fields.index(field)]
