"""FAT12/16/32 on-disk declarations: every structure and constant the writer and reader share.

Declarations only (Microsoft's "FAT: General Overview of On-Disk Format", 1.03): the boot
sector with its BPB and the two extended BPBs, FSInfo, the 32-byte directory entry, the long
name (LFN) entry, the LFN checksum and the date/time packing. Sizes are asserted once, by
:class:`imgkit.formats.records.Record`.
"""
from __future__ import annotations

import time

from imgkit.formats.records import Record

SECTOR = 512
DIRENT_SIZE = 32

# Common BPB (offsets 0..35).
BPB = Record("BPB", 36, [
    ("jump", "3s"), ("oem", "8s"), ("bytes_per_sector", "H"), ("sectors_per_cluster", "B"),
    ("reserved_sectors", "H"), ("num_fats", "B"), ("root_entries", "H"),
    ("total_sectors16", "H"), ("media", "B"), ("fat_sectors16", "H"),
    ("sectors_per_track", "H"), ("heads", "H"), ("hidden_sectors", "I"),
    ("total_sectors32", "I"),
])
# FAT12/16 extended BPB at offset 36: boot code starts at 0x3E.
EBPB16 = Record("EBPB16", 26, [
    ("drive", "B"), ("_", "B"), ("boot_signature", "B"), ("serial", "I"), ("label", "11s"),
    ("fs_type", "8s"),
])
# FAT32 extended BPB at offset 36: boot code starts at 0x5A.
EBPB32 = Record("EBPB32", 54, [
    ("fat_sectors32", "I"), ("ext_flags", "H"), ("fs_version", "H"), ("root_cluster", "I"),
    ("fsinfo_sector", "H"), ("backup_boot_sector", "H"), ("_", "12s"), ("drive", "B"),
    ("_", "B"), ("boot_signature", "B"), ("serial", "I"), ("label", "11s"), ("fs_type", "8s"),
])
EBPB_OFFSET = BPB.size
BOOT_SIGNATURE = b"\x55\xaa"          # at 510
EXT_BOOT_SIGNATURES = (0x28, 0x29)    # 0x29: serial, label and type string present

FSINFO = Record("FSInfo", SECTOR, [
    ("lead_signature", "I"), ("_", "480s"), ("struct_signature", "I"), ("free_count", "I"),
    ("next_free", "I"), ("_", "12s"), ("trail_signature", "I"),
])
FSINFO_LEAD, FSINFO_STRUCT, FSINFO_TRAIL = 0x41615252, 0x61417272, 0xAA550000
FSINFO_UNKNOWN = 0xFFFFFFFF

# Directory entry: name, attr, NT case bits, ctime tenths, ctime, cdate, adate, cluster high,
# mtime, mdate, cluster low, size.
DIRENT = Record("Dirent", DIRENT_SIZE, [
    ("name", "11s"), ("attr", "B"), ("nt_case", "B"), ("ctime_tenths", "B"), ("ctime", "H"),
    ("cdate", "H"), ("adate", "H"), ("cluster_hi", "H"), ("mtime", "H"), ("mdate", "H"),
    ("cluster_lo", "H"), ("size", "I"),
])
# Long-name entry: sequence number (0x40 on the last), 13 UTF-16 units in three pieces.
LFN = Record("LfnEntry", DIRENT_SIZE, [
    ("order", "B"), ("name1", "10s"), ("attr", "B"), ("type", "B"), ("checksum", "B"),
    ("name2", "12s"), ("cluster", "H"), ("name3", "4s"),
])
LFN_UNITS = 13
LFN_LAST = 0x40
LFN_ORDER_MASK = 0x1F

ATTR_READ_ONLY = 0x01
ATTR_HIDDEN = 0x02
ATTR_SYSTEM = 0x04
ATTR_VOLUME_ID = 0x08
ATTR_DIRECTORY = 0x10
ATTR_ARCHIVE = 0x20
ATTR_LFN = 0x0F
ATTR_LFN_MASK = 0x3F
CASE_LOWER_BASE = 0x08               # NT/mtools: the 8-character base is lower case
CASE_LOWER_EXT = 0x10                # ... and the extension

DIRENT_END = 0x00                    # first name byte: no entries follow
DIRENT_FREE = 0xE5                   # first name byte: deleted entry
DIRENT_KANJI_E5 = 0x05               # first name byte standing for a real 0xE5
DOT, DOTDOT = b".          ", b"..         "
NO_NAME = b"NO NAME    "

MEDIA_FIXED = 0xF8
# Valid data-cluster counts per FAT type (the FAT16 floor as mkfs.fat: 4087, not 4085).
MIN_CLUSTERS = {12: 1, 16: 4087, 32: 65525}
MAX_CLUSTERS = {12: 4084, 16: 65524, 32: 0x0FFFFFF5}
EOC = {12: 0xFFF, 16: 0xFFFF, 32: 0x0FFFFFFF}          # what the writer stores
EOC_MIN = {12: 0xFF8, 16: 0xFFF8, 32: 0x0FFFFFF8}      # anything from here ends a chain
FAT32_MASK = 0x0FFFFFFF
FIRST_CLUSTER = 2
MAX_DIR_ENTRIES = 65536              # a directory spans at most 2 MiB
MAX_FILE_SIZE = 0xFFFFFFFF

FAT_EPOCH = 315532800                # 1980-01-01T00:00:00Z
FAT_LAST = 4354819198                # 2107-12-31T23:59:58Z


def fat_type_for_clusters(clusters: int) -> int:
    """12 or 16 by cluster count, as the specification decides (FAT32 is told by the BPB)."""
    return 12 if clusters <= MAX_CLUSTERS[12] else 16


def lfn_checksum(short: bytes) -> int:
    """The checksum of an 11-byte short name that every LFN entry of that name carries."""
    s = 0
    for b in short:
        s = (((s & 1) << 7) + (s >> 1) + b) & 0xFF
    return s


def pack_time(mtime: int) -> tuple[int, int, int]:
    """``(date, time, tenths)`` of an epoch time as UTC (FAT has no zone), clamped to FAT's range."""
    t = min(max(int(mtime), FAT_EPOCH), FAT_LAST)
    tm = time.gmtime(t)
    date = ((tm.tm_year - 1980) << 9) | (tm.tm_mon << 5) | tm.tm_mday
    tod = (tm.tm_hour << 11) | (tm.tm_min << 5) | (tm.tm_sec // 2)
    return date, tod, (tm.tm_sec % 2) * 100


def unpack_time(date: int, tod: int) -> int:
    """Epoch seconds of a FAT date and time read as UTC, as Linux (``tz=UTC``) does; 0 if unset."""
    import calendar  # the reader's alone: the writer's start-up does without it

    month, day = (date >> 5) & 0xF, date & 0x1F
    if not 1 <= month <= 12 or not day:
        return 0
    try:
        return calendar.timegm((1980 + (date >> 9), month, day, tod >> 11, (tod >> 5) & 0x3F,
                                (tod & 0x1F) * 2, 0, 0, 0))
    except (ValueError, OverflowError):
        return 0
