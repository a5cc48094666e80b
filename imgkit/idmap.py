"""uid/gid remapping, applied when an archive or image is written.

Three policies cover what initramfs and image builders do: squash every owner to root,
map one id to root (``gen_initramfs.sh -u/-g``, ``INITRAMFS_ROOT_UID``), or translate ranges
written as in ``/proc/PID/uid_map`` (``inside outside count``). Here "outside" is the id in
the source and "inside" the id in the image.
"""
from __future__ import annotations

from dataclasses import dataclass

from imgkit.errors import InputError
from imgkit.tree import Entry, Tree


@dataclass(frozen=True)
class IdRange:
    inside: int
    outside: int
    count: int

    def map(self, value: int) -> int | None:
        if self.outside <= value < self.outside + self.count:
            return self.inside + (value - self.outside)
        return None


@dataclass(frozen=True)
class IdMap:
    """How source owners become image owners.

    ``mode`` is ``keep``, ``squash`` (everything 0:0), ``root`` (``root_uid``/``root_gid``
    become 0, others unchanged) or ``ranges``.
    """

    mode: str = "keep"
    root_uid: int | None = None
    root_gid: int | None = None
    uid_ranges: tuple[IdRange, ...] = ()
    gid_ranges: tuple[IdRange, ...] = ()

    def apply(self, tree: Tree) -> Tree:
        if self.mode == "keep":
            return tree
        return tree.map(self.map_entry)

    def map_entry(self, e: Entry) -> Entry:
        if self.mode == "squash":
            return e.replace(uid=0, gid=0) if (e.uid or e.gid) else e
        if self.mode == "root":
            uid = 0 if self.root_uid is not None and e.uid == self.root_uid else e.uid
            gid = 0 if self.root_gid is not None and e.gid == self.root_gid else e.gid
            return e.replace(uid=uid, gid=gid)
        if self.mode == "ranges":
            return e.replace(uid=self._map(self.uid_ranges, e.uid, "uid", e),
                             gid=self._map(self.gid_ranges, e.gid, "gid", e))
        raise InputError(f"unknown id map mode {self.mode!r}")

    @staticmethod
    def _map(ranges: tuple[IdRange, ...], value: int, what: str, e: Entry) -> int:
        if not ranges:
            return value
        for r in ranges:
            mapped = r.map(value)
            if mapped is not None:
                return mapped
        where = f" (from {e.origin})" if e.origin else ""
        raise InputError(
            f"{what} {value} of /{e.path} is outside every mapped range{where}",
            hint=f"add a range covering it, e.g. '--uid-map 0 {value} 1'")


def parse_ranges(text: str) -> tuple[IdRange, ...]:
    """``"0 1000000 65536"`` or several separated by commas -> ranges."""
    out = []
    for chunk in text.split(","):
        nums = chunk.split()
        if len(nums) != 3 or not all(n.isascii() and n.isdigit() for n in nums):
            raise InputError(f"id range {chunk.strip()!r}: expected 'INSIDE OUTSIDE COUNT', "
                             "three non-negative integers")
        inside, outside, count = map(int, nums)
        if count == 0:
            raise InputError(f"id range {chunk.strip()!r}: count must be at least 1")
        out.append(IdRange(inside, outside, count))
    return tuple(out)


def idmap_from_options(*, squash: bool = False, root_uid: int | None = None,
                       root_gid: int | None = None, uid_map: str | None = None,
                       gid_map: str | None = None) -> IdMap:
    """The id map the user's options ask for; squash wins, then ranges, then one id to root."""
    if squash:
        return IdMap("squash")
    if uid_map or gid_map:
        return IdMap("ranges", uid_ranges=parse_ranges(uid_map) if uid_map else (),
                     gid_ranges=parse_ranges(gid_map) if gid_map else ())
    if root_uid is not None or root_gid is not None:
        return IdMap("root", root_uid=root_uid, root_gid=root_gid)
    return IdMap("keep")


SQUASH = IdMap("squash")
KEEP = IdMap("keep")
