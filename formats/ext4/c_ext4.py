"""ext2/3/4 superblock declarations (the fields imgkit reads) and feature flag names.

The superblock is 1024 bytes at byte 1024 of the filesystem. Declarations only: the sniffer
and :mod:`.read` parse it from here.
"""
from __future__ import annotations

from imgkit.formats.records import Record

SUPERBLOCK_OFFSET = 1024
MAGIC = 0xEF53
ROOT_INODE = 2

SUPERBLOCK = Record("Ext4Superblock", 1024, [
    ("inodes_count", "I"), ("blocks_count_lo", "I"), ("r_blocks_count_lo", "I"),
    ("free_blocks_count_lo", "I"), ("free_inodes_count", "I"), ("first_data_block", "I"),
    ("log_block_size", "I"), ("log_cluster_size", "I"), ("blocks_per_group", "I"),
    ("clusters_per_group", "I"), ("inodes_per_group", "I"), ("mtime", "I"), ("wtime", "I"),
    ("mnt_count", "H"), ("max_mnt_count", "H"), ("magic", "H"), ("state", "H"),
    ("errors", "H"), ("minor_rev_level", "H"), ("lastcheck", "I"), ("checkinterval", "I"),
    ("creator_os", "I"), ("rev_level", "I"), ("def_resuid", "H"), ("def_resgid", "H"),
    ("first_ino", "I"), ("inode_size", "H"), ("block_group_nr", "H"),
    ("feature_compat", "I"), ("feature_incompat", "I"), ("feature_ro_compat", "I"),
    ("uuid", "16s"), ("volume_name", "16s"), ("last_mounted", "64s"),
    ("algorithm_usage_bitmap", "I"), ("_", "60s"), ("mkfs_time", "I"), ("_", "68s"),
    ("blocks_count_hi", "I"), ("r_blocks_count_hi", "I"), ("free_blocks_count_hi", "I"),
    ("_", "676s"),
])
assert SUPERBLOCK.offset_of("magic") == 56
assert SUPERBLOCK.offset_of("feature_compat") == 92
assert SUPERBLOCK.offset_of("mkfs_time") == 0x108
assert SUPERBLOCK.offset_of("blocks_count_hi") == 0x150

COMPAT_HAS_JOURNAL = 0x4
INCOMPAT_64BIT = 0x80

COMPAT = {0x1: "dir_prealloc", 0x2: "imagic_inodes", 0x4: "has_journal", 0x8: "ext_attr",
          0x10: "resize_inode", 0x20: "dir_index", 0x40: "lazy_bg", 0x200: "sparse_super2",
          0x400: "fast_commit", 0x800: "stable_inodes", 0x1000: "orphan_file"}
INCOMPAT = {0x1: "compression", 0x2: "filetype", 0x4: "needs_recovery",
            0x8: "journal_dev", 0x10: "meta_bg", 0x40: "extent", 0x80: "64bit",
            0x100: "mmp", 0x200: "flex_bg", 0x400: "ea_inode", 0x1000: "dirdata",
            0x2000: "metadata_csum_seed", 0x4000: "large_dir", 0x8000: "inline_data",
            0x10000: "encrypt", 0x20000: "casefold"}
RO_COMPAT = {0x1: "sparse_super", 0x2: "large_file", 0x4: "btree_dir", 0x8: "huge_file",
             0x10: "uninit_bg", 0x20: "dir_nlink", 0x40: "extra_isize", 0x100: "quota",
             0x200: "bigalloc", 0x400: "metadata_csum", 0x800: "replica",
             0x1000: "read-only", 0x2000: "project", 0x4000: "shared_blocks",
             0x8000: "verity", 0x10000: "orphan_present"}
# What ext3 does not know: any of these makes it ext4 (the rule blkid follows).
EXT4_INCOMPAT = 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x4000 | 0x8000 | 0x10000 | 0x20000
EXT4_RO_COMPAT = 0x8 | 0x10 | 0x20 | 0x40 | 0x100 | 0x200 | 0x400 | 0x2000 | 0x8000


def kind(sb) -> str:
    """``ext2``, ``ext3`` or ``ext4`` of a parsed superblock, as blkid tells them apart."""
    if sb.feature_incompat & EXT4_INCOMPAT or sb.feature_ro_compat & EXT4_RO_COMPAT:
        return "ext4"
    return "ext3" if sb.feature_compat & COMPAT_HAS_JOURNAL else "ext2"


def sniff(head: bytes) -> str | None:
    """The ext kind when ``head`` (the filesystem's first 2 KiB or more) has the magic."""
    if len(head) < SUPERBLOCK_OFFSET + SUPERBLOCK.size:
        return None
    sb = SUPERBLOCK.unpack(head, SUPERBLOCK_OFFSET)
    return kind(sb) if sb.magic == MAGIC else None
