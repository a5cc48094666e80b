"""CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of erofs superblocks
and of every VHDX structure. Python's zlib has only the IEEE CRC-32; the structures summed
are a few KiB, so a table walk is fast enough."""
from __future__ import annotations


def _table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _table()


def crc32c_raw(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    """The kernel's ``crc32c(~0, data)``: the register without the final inversion."""
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def crc32c(data: bytes) -> int:
    """The standard CRC-32C of ``data`` (initial ~0, final inversion)."""
    return crc32c_raw(data) ^ 0xFFFFFFFF
