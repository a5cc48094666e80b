"""POSIX ACLs as Linux stores them in the ``system.posix_acl_access``/``_default`` xattrs.

Archives carry ACLs as text (``SCHILY.acl.*`` from GNU tar and bsdtar) or as libarchive ACL
entries; every image writer (ext4 through debugfs, tar as ``SCHILY.xattr``) stores xattrs, so
an ACL becomes the kernel's binary xattr value (``include/uapi/linux/posix_acl_xattr.h``):
a little-endian version word, then one ``{u16 tag, u16 perm, u32 id}`` per entry, sorted by
tag and then id.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

#: The header word and one entry of the xattr value.
_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")
assert _HEADER.size == 4 and _ENTRY.size == 8
VERSION = 2
UNDEFINED_ID = 0xFFFFFFFF

ACCESS_XATTR = "system.posix_acl_access"
DEFAULT_XATTR = "system.posix_acl_default"


class Tag(enum.IntEnum):
    """``ACL_*`` tags of the xattr format; their order is the order the kernel requires."""

    USER_OBJ = 0x01
    USER = 0x02
    GROUP_OBJ = 0x04
    GROUP = 0x08
    MASK = 0x10
    OTHER = 0x20


#: Tags whose entry names a user or group and so needs an id.
QUALIFIED = (Tag.USER, Tag.GROUP)

#: libarchive's numbering (archive_entry.h) of the tags and of the ACL types, which the
#: archive reader and the tar writer translate from and to.
LIBARCHIVE_TAGS = {10001: Tag.USER, 10002: Tag.USER_OBJ, 10003: Tag.GROUP, 10004: Tag.GROUP_OBJ,
                   10005: Tag.MASK, 10006: Tag.OTHER}
LIBARCHIVE_ACL_ACCESS = 0x100
LIBARCHIVE_ACL_DEFAULT = 0x200
LIBARCHIVE_TYPES = {LIBARCHIVE_ACL_ACCESS: ACCESS_XATTR, LIBARCHIVE_ACL_DEFAULT: DEFAULT_XATTR}


@dataclass(frozen=True)
class AclEntry:
    """One ACL entry: ``perm`` is ``rwx`` as 4/2/1; ``qualifier`` the uid or gid for
    ``USER``/``GROUP`` (else :data:`UNDEFINED_ID`)."""

    tag: Tag
    perm: int
    qualifier: int = UNDEFINED_ID


def encode(entries: list[AclEntry]) -> bytes:
    """The xattr value for ``entries``, in the order the kernel checks for.

    Raises ``ValueError`` for what the kernel would refuse: a missing or repeated
    user/group/other entry, named entries without a mask, a repeated id.
    """
    ordered = sorted(entries, key=lambda e: (e.tag, e.qualifier if e.tag in QUALIFIED else 0))
    tags = [e.tag for e in ordered]
    for required in (Tag.USER_OBJ, Tag.GROUP_OBJ, Tag.OTHER):
        if tags.count(required) != 1:
            raise ValueError(f"expected one {required.name.lower()} entry, got {tags.count(required)}")
    if tags.count(Tag.MASK) > 1:
        raise ValueError("more than one mask entry")
    if any(t in QUALIFIED for t in tags) and Tag.MASK not in tags:
        raise ValueError("named user or group entries without a mask entry")
    keys = [(e.tag, e.qualifier) for e in ordered if e.tag in QUALIFIED]
    if len(keys) != len(set(keys)):
        raise ValueError("the same user or group named twice")
    return _HEADER.pack(VERSION) + b"".join(
        _ENTRY.pack(e.tag, e.perm & 0o7,
                    e.qualifier if e.tag in QUALIFIED else UNDEFINED_ID) for e in ordered)


def decode(value: bytes) -> list[AclEntry]:
    """The entries of an xattr value (for checks and listings)."""
    if len(value) < _HEADER.size or (len(value) - _HEADER.size) % _ENTRY.size:
        raise ValueError(f"ACL xattr of {len(value)} bytes: expected 4 + 8*n")
    (version,) = _HEADER.unpack_from(value)
    if version != VERSION:
        raise ValueError(f"ACL xattr version {version}: expected {VERSION}")
    return [AclEntry(Tag(tag), perm, qual)
            for tag, perm, qual in _ENTRY.iter_unpack(value[_HEADER.size:])]
