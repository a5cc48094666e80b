"""Small programs the benchmark runs as their own processes (so each gets its own RSS).

``python helpers.py copy TREE OUT``   the floor: every regular file's bytes, in tree order,
                                     into one output file with ``os.copy_file_range``.
``python helpers.py fat TREE OUT``    imgkit's FAT writer on a directory.
``python helpers.py iso TREE OUT``    imgkit's ISO 9660 writer (Rock Ridge + Joliet).
``python helpers.py ext4 TREE OUT SIZE``  imgkit's ext4 writer at SIZE bytes.
``python helpers.py squashfs TREE OUT``  imgkit's squashfs writer (gzip, 128 KiB blocks).
``python helpers.py erofs TREE OUT``  imgkit's erofs writer (uncompressed).
``python helpers.py mksquashfs``      print the mksquashfs imgkit runs (the reference row uses it).
``python helpers.py import fat``      only start Python and import what ``fat`` uses: the
                                     fixed cost under every imgkit row.
"""
from __future__ import annotations

import os
import stat
import sys


def copy_floor(tree: str, out: str) -> None:
    """Copy every regular file of ``tree`` into ``out``: what any archiver must at least do."""
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for dirpath, dirnames, filenames in os.walk(tree):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode):
                    continue
                src = os.open(path, os.O_RDONLY)
                try:
                    left = st.st_size
                    while left > 0:
                        n = os.copy_file_range(src, fd, left)
                        if n == 0:
                            break
                        left -= n
                finally:
                    os.close(src)
    finally:
        os.close(fd)


def _tree(path: str):
    from imgkit.sources import read_directory
    return read_directory(path)


def main(argv: list[str]) -> int:
    what, *args = argv
    if what == "copy":
        copy_floor(args[0], args[1])
    elif what == "import":
        from imgkit.formats.fat import write_fat  # noqa: F401
        from imgkit.sources import read_directory  # noqa: F401
    elif what == "fat":
        from imgkit.formats.fat import write_fat
        write_fat(_tree(args[0]), args[1], size=None, skip_special=True)
    elif what == "iso":
        from imgkit.formats.iso9660 import write_iso
        write_iso(_tree(args[0]), args[1])
    elif what == "ext4":
        from imgkit.formats.ext4 import write_ext4
        write_ext4(_tree(args[0]), args[1], size=int(args[2]))
    elif what == "squashfs":
        from imgkit.formats.squashfs import write_squashfs
        write_squashfs(_tree(args[0]), args[1], mtime=1700000000)
    elif what == "erofs":
        from imgkit.formats.erofs import write_erofs
        write_erofs(_tree(args[0]), args[1])
    elif what == "mksquashfs":
        from imgkit.formats.squashfs_tools import squashfs_tools
        print(squashfs_tools().mksquashfs)
    else:
        print(f"helpers.py: unknown command {what!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
