"""Hostile inputs for every reader: a seeded corpus of mutated images, bad configs, bad
arguments, and a worker that runs them under a time and a memory limit.

:func:`make_seeds` builds small valid images of every kind imgkit writes (a GPT disk with a FAT
and an ext4 partition, an MBR disk, FAT, ext4, ISO 9660, cpio and tar plain and compressed,
qcow2, a UKI) plus the fixtures made by other tools. :func:`make_cases` mutates them with a
seeded :class:`random.Random`: truncations, bit flips, and hostile counts, offsets and sizes
written into the fields each format's reader trusts, some with the checksums recomputed so the
damage gets past the CRC checks (GPT). The worker (``python tests/fuzzing.py CASES RESULTS``)
runs every case through the CLI's ``main`` in-process with captured output, one at a time, in
a process with ``RLIMIT_AS`` set, each under a timer, and records the exit status, the output,
the time taken, what was left in ``$TMPDIR``, the output directory and the working directory,
and any child process still alive. :func:`verdict` judges one result.
"""
from __future__ import annotations

import contextlib
import io
import json
import lzma
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
TIME_LIMIT = 10.0            # seconds per case
MEMORY_LIMIT = 3 << 30       # bytes of address space for the worker
ERROR_LINE = re.compile(r"^imgkit(?: [a-z]+)?: error: ", re.M)

# -- the valid images -------------------------------------------------------------------------

_CORPUS_TOML = """\
seed = "fuzz"
[trees.small]
entries = ["dir /etc 0755 0 0", "dir /etc/sub 0700 1 2", "slink /etc/link sub 0777 0 0",
           "nod /dev/null 0666 0 0 c 1 3", "pipe /run/fifo 0600 0 0"]
files = { "/etc/hello.txt" = "hello.txt", "/bin/tool" = "blob" }
[initramfs.small]
tree = "small"
compress = "gzip"
output = "small.cpio.gz"
[uki.main]
kernel = "blob"
initrd = ["initramfs:small"]
cmdline = "console=ttyS0"
output = "uki.efi"
[filesystems.esp]
type = "vfat"
tree = "small"
label = "ESP"
output = "esp.fat"
[filesystems.root]
type = "ext4"
tree = "small"
label = "root"
size = "2M"
output = "root.ext4"
[disk]
output = "gpt.img"
table = "gpt"
partitions = [
  { name = "esp", type = "esp", size = "auto", filesystem = "esp" },
  { name = "root", type = "linux", size = "auto", filesystem = "root" },
]
[iso]
output = "small.iso"
tree = "small"
hybrid = false
"""

_MBR_TOML = """\
seed = "fuzz-mbr"
[trees.t]
entries = ["dir /d 0755 0 0"]
files = { "/d/hello.txt" = "hello.txt" }
[filesystems.boot]
type = "vfat"
tree = "t"
[disk]
output = "mbr.img"
table = "mbr"
partitions = [
  { name = "boot", type = "fat32", size = "auto", filesystem = "boot" },
  { name = "data", type = "linux", size = "1M" },
]
"""


def _imgkit(*args: str, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "imgkit", *args], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_seeds(work: Path) -> dict[str, Path]:
    """Small valid images of every kind, by name (``gpt``, ``fat``, ``cpio``...)."""
    src = work / "src"
    src.mkdir(parents=True)
    (src / "hello.txt").write_text("hello\n")
    (src / "blob").write_bytes(random.Random(1).randbytes(6000))
    (src / "corpus.toml").write_text(_CORPUS_TOML)
    (src / "mbr.toml").write_text(_MBR_TOML)
    out = work / "seeds"
    _imgkit("build", "corpus.toml", "-O", str(out), cwd=src)
    _imgkit("build", "mbr.toml", "-O", str(out), cwd=src)
    tree = src / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "motd").write_text("motd\n")
    os.symlink("motd", tree / "etc" / "link")
    _imgkit("initramfs", str(tree), "-o", str(out / "plain.cpio"), "--compress", "none", cwd=src)
    _imgkit("tar", str(tree), "-o", str(out / "plain.tar"), cwd=src)
    _imgkit("tar", str(tree), "-o", str(out / "small.tar.zst"), cwd=src)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(out / "gpt.img"),
                    str(out / "gpt.qcow2")], check=True)
    for fmt, options in (("vmdk", ()), ("vhdx", ()), ("vpc", ("-o", "force_size=on"))):
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, *options,
                        str(out / "gpt.img"), str(out / f"gpt.{fmt}")], check=True)
    subprocess.run(["img2simg", str(out / "gpt.img"), str(out / "gpt.simg")], check=True,
                   stdout=subprocess.DEVNULL)
    (src / "list.txt").write_text(f"dir /x 0755 0 0\nfile /x/h {src / 'hello.txt'} 0644 0 0\n"
                                  "slink /x/l h 0777 0 0\nnod /x/c 0600 0 0 c 5 1\n")
    seeds = {"gpt": out / "gpt.img", "mbr": out / "mbr.img", "fat": out / "esp.fat",
             "ext4": out / "root.ext4", "iso": out / "small.iso", "cpio": out / "plain.cpio",
             "cpio.gz": out / "small.cpio.gz", "tar": out / "plain.tar",
             "tar.zst": out / "small.tar.zst", "qcow2": out / "gpt.qcow2", "uki": out / "uki.efi",
             "vmdk": out / "gpt.vmdk", "vhdx": out / "gpt.vhdx", "vpc": out / "gpt.vpc",
             "android-sparse": out / "gpt.simg",
             "list": src / "list.txt"}
    (out / "fixtures").mkdir()
    for fixture in sorted(FIXTURES.glob("*.xz")):
        name = "fixture-" + fixture.name.split(".")[0]
        path = out / "fixtures" / fixture.name[:-3]
        path.write_bytes(lzma.decompress(fixture.read_bytes()))
        seeds[name] = path
    return seeds


# -- mutations --------------------------------------------------------------------------------

HOSTILE = (0, 1, 2, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
           0xFFFFFFFFFFFF, 0x7FFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF)

#: Fields readers trust, per seed kind: (offset, width, endianness).
GPT_FIELDS = [(512 + o, w, "<") for o, w in ((12, 4), (24, 8), (32, 8), (40, 8), (48, 8),
                                             (72, 8), (80, 4), (84, 4))]
FAT_FIELDS = [(o, w, "<") for o, w in ((11, 2), (13, 1), (14, 2), (16, 1), (17, 2), (19, 2),
                                       (22, 2), (32, 4), (36, 4), (44, 4))]
ISO_FIELDS = [(32768 + o, w, e) for o, w in ((80, 4), (128, 2), (132, 4), (140, 4),
                                             (158, 4), (166, 4)) for e in ("<",)]
EXT4_FIELDS = [(1024 + o, 4, "<") for o in (0, 4, 20, 24, 32, 40, 76, 88)]
MBR_FIELDS = [(446 + 16 * i + o, 4, "<") for i in range(4) for o in (8, 12)]
CPIO_FIELDS = [(6 + 8 * i, 8, "hex") for i in (6, 11)]   # newc filesize, namesize
TAR_FIELDS = [(124, 12, "oct"), (100, 8, "oct"), (329, 8, "oct")]
QCOW2_FIELDS = [(o, w, ">") for o, w in ((8, 8), (16, 4), (20, 4), (24, 8), (36, 4), (40, 8),
                                         (48, 8), (56, 4), (64, 8), (72, 8))]
#: vmdk: capacity, grain size, descriptor offset and size; vpc (the footer copy at 0): data
#: offset, sizes, checksum; vhdx: the region table's entry count and first entry's offset and
#: length; Android sparse: header sizes, block size and counts.
VMDK_FIELDS = [(o, 8, "<") for o in (12, 20, 28, 36)]
VPC_FIELDS = [(16, 8, ">"), (40, 8, ">"), (48, 8, ">"), (64, 4, ">")]
VHDX_FIELDS = [(196608 + 8, 4, "<"), (196608 + 32, 8, "<"), (196608 + 40, 4, "<")]
SPARSE_FIELDS = [(8, 2, "<"), (10, 2, "<"), (12, 4, "<"), (16, 4, "<"), (20, 4, "<")]


def _pe_fields(data: bytes) -> list[tuple[int, int, str]]:
    if len(data) < 0x40:
        return [(0x3C, 4, "<")]
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    fields = [(0x3C, 4, "<"), (pe + 6, 2, "<"), (pe + 20, 2, "<")]
    if pe + 24 < len(data):
        opt = struct.unpack_from("<H", data, pe + 20)[0]
        table = pe + 24 + opt
        fields += [(table + 40 * i + o, 4, "<") for i in range(6) for o in (8, 12, 16, 20)]
    return fields


def fields_for(kind: str, data: bytes) -> list[tuple[int, int, str]]:
    if kind in ("gpt", "fixture-gpt", "fixture-genimage"):
        return GPT_FIELDS + MBR_FIELDS
    if kind == "mbr" or kind == "fixture-mbr":
        return MBR_FIELDS
    if kind in ("fat",) or kind.startswith("fixture-fat"):
        return FAT_FIELDS
    if kind in ("iso", "fixture-iso9660"):
        return ISO_FIELDS
    if kind in ("ext4", "fixture-ext4"):
        return EXT4_FIELDS
    if kind == "cpio":
        return CPIO_FIELDS
    if kind == "tar":
        return TAR_FIELDS
    if kind == "qcow2":
        return QCOW2_FIELDS
    if kind == "uki":
        return _pe_fields(data)
    return {"vmdk": VMDK_FIELDS, "vpc": VPC_FIELDS, "vhdx": VHDX_FIELDS,
            "android-sparse": SPARSE_FIELDS}.get(kind, [])


def _put(data: bytearray, offset: int, width: int, endian: str, value: int) -> None:
    if offset + width > len(data):
        return
    if endian == "hex":
        data[offset:offset + width] = f"{value & 0xFFFFFFFF:08X}".encode()
    elif endian == "oct":
        data[offset:offset + width] = f"{value & (8 ** (width - 1) - 1):0{width - 1}o}\0".encode()
    else:
        data[offset:offset + width] = (value & ((1 << 8 * width) - 1)).to_bytes(
            width, "little" if endian == "<" else "big")


def reseal_gpt(data: bytearray) -> None:
    """Recompute the primary GPT's CRCs, so a hostile field gets past the checksum."""
    if data[512:520] != b"EFI PART":
        return
    size = struct.unpack_from("<I", data, 512 + 12)[0]
    count, esize = struct.unpack_from("<II", data, 512 + 80)
    lba = struct.unpack_from("<Q", data, 512 + 72)[0]
    if lba * 512 + count * esize <= len(data) and count * esize < (1 << 24):
        struct.pack_into("<I", data, 512 + 88,
                         zlib.crc32(data[lba * 512:lba * 512 + count * esize]))
    if 92 <= size <= 512:
        struct.pack_into("<I", data, 512 + 16, 0)
        struct.pack_into("<I", data, 512 + 16, zlib.crc32(data[512:512 + size]))


def mutate(rng: random.Random, kind: str, data: bytes) -> tuple[str, bytes]:
    """One mutation of ``data`` (a seed image of ``kind``): its description and its bytes."""
    buf = bytearray(data)
    choice = rng.random()
    fields = fields_for(kind, data)
    head = min(len(buf), 65536)
    if choice < 0.2:
        cut = rng.choice([0, 1, 511, 512, 1023, 1024, 2048, 4095, 32768, 34816,
                          rng.randrange(max(1, len(buf))), len(buf) // 2, len(buf) - 1])
        return f"truncate at {cut}", bytes(buf[:max(0, min(cut, len(buf)))])
    if choice < 0.45:
        n = rng.choice([1, 2, 4, 16, 64])
        spots = [rng.randrange(head if rng.random() < 0.8 else len(buf)) for _ in range(n)]
        for at in spots:
            buf[at] ^= 1 << rng.randrange(8)
        if kind.endswith("gpt") and rng.random() < 0.5:
            reseal_gpt(buf)
        return f"flip {n} bits at {spots[:4]}", bytes(buf)
    if choice < 0.85 and fields:
        done = []
        for _ in range(rng.choice([1, 1, 2, 3])):
            offset, width, endian = rng.choice(fields)
            value = rng.choice(HOSTILE + (len(buf), len(buf) + 1, len(buf) // 512 + 1))
            _put(buf, offset, width, endian, value)
            done.append(f"{value:#x}@{offset}")
        if kind.endswith("gpt") or kind == "fixture-genimage":
            if rng.random() < 0.3:   # a name with a lone surrogate, CRCs fixed
                lba = struct.unpack_from("<Q", buf, 512 + 72)[0] if len(buf) > 600 else 2
                at = lba * 512 + 56
                if 0 < at < len(buf) - 4:
                    buf[at:at + 4] = b"\x00\xd8A\x00"
                    done.append("lone surrogate in name 1")
            if rng.random() < 0.8:
                reseal_gpt(buf)
                done.append("CRCs recomputed")
        return "set " + ", ".join(done), bytes(buf)
    if choice < 0.9:
        done = []
        for _ in range(rng.choice([1, 2, 4, 8])):
            width = rng.choice([1, 2, 4, 8])
            at = rng.randrange(max(1, head - width)) // width * width
            value = rng.choice(HOSTILE + (len(buf), len(buf) // 512))
            _put(buf, at, width, rng.choice("<>"), value)
            done.append(f"{value:#x}@{at}")
        if kind.endswith("gpt") and rng.random() < 0.5:
            reseal_gpt(buf)
        return "put " + ", ".join(done), bytes(buf)
    if choice < 0.95:
        at = rng.randrange(head)
        n = rng.choice([4, 16, 512])
        buf[at:at + n] = rng.choice([b"\xff", b"\x00"]) * n
        return f"fill {n} bytes at {at}", bytes(buf)
    at = rng.randrange(max(1, head - 512))
    block = bytes(buf[at:at + 512])
    dest = rng.randrange(max(1, head))
    buf[dest:dest + len(block)] = block
    return f"copy 512 bytes {at} -> {dest}", bytes(buf)


# -- cases ------------------------------------------------------------------------------------

BAD_CONFIGS = [
    "[trees.a]\nfiles = { \"/x\" = \"fs:a\" }\n[filesystems.a]\ntype = \"vfat\"\ntree = \"a\"\n",
    "[trees.a]\nentries = [\"dir /x 0755 \u00b2 0\"]\n[initramfs.a]\ntree = \"a\"\n",
    "[trees.a]\nroot_uid = -1\n[initramfs.a]\ntree = \"a\"\n",
    "[initramfs.a]\ntree = \"nope\"\n",
    "[[[",
    "a = " + "[" * 2000 + "]" * 2000 + "\n",
    "[disk]\noutput = \"../escape.img\"\npartitions = []\n",
    "[disk]\noutput = \"/tmp/escape.img\"\npartitions = []\n",
    "[filesystems.f]\ntype = \"vfat\"\nsize = \"10T\"\noutput = \"f.img\"\n",
    "[filesystems.f]\ntype = \"ext4\"\nsize = \"-1\"\noutput = \"f.img\"\n",
    "[filesystems.f]\ntype = \"nope\"\n",
    "[trees.a]\nentries = [\"nod /d 0600 0 0 c 99999999999 1\"]\n[initramfs.a]\ntree = \"a\"\n"
    "output = \"a.cpio\"\n",
    "[uki.u]\ncmdline = \"x\"\nkernel = \"uki:u\"\noutput = \"u.efi\"\n",
    "[trees.a]\nfiles = { \"/x\" = \"initramfs:b\" }\n[initramfs.b]\ntree = \"a\"\n",
]
HOSTILE_LISTS = [
    "nod /x 0600 0 0 c " + "1" * 5000 + " 1\n",
    "dir /x " + "7" * 5000 + " 0 0\n",
    "slink /a b 0777 0 0\nslink /b a 0777 0 0\nfile /a/x {hello} 0644 0 0\n",
    "file /x {hello} 0644 0 0 x\n",
    "file /x {hello} 0644 0 0 y\nfile /y {hello} 0644 0 0 x\n",
    "file /x {fifo} 0644 0 0\n",
    "file /x /dev/zero 0644 0 0\n",
    "file /x ${{NO_SUCH_VARIABLE}} 0644 0 0\n",
    "dir /" + "/".join(["d"] * 3000) + " 0755 0 0\n",
    "dir /x 0755 0 0\n" * 3 + "\xff\xfe not utf-8\n" * 2000,
    "nod /x 0600 0 0 x 1 1\n",
    "dir /../../etc 0755 0 0\n",
    "file /x {hello} 0644 0 0 ../../escape\n",
]
BAD_CONFIG_BYTES = [b"\xff\xfe[trees.a]\n", b"seed = \"\xc3\x28\"\n", b"\x00" * 64]

BAD_ARGS = [
    ["inspect"], ["ls"], ["inspect", "/dev/zero"], ["ls", "/dev/zero"], ["ls", "/dev/null"],
    ["inspect", "/nonexistent"], ["ls", "/nonexistent:1"], ["inspect", "."],
    ["initramfs", "--entry", "dir /x 0755 \u00b2 0", "-o", "{out}/a.cpio"],
    ["initramfs", "--mtime", "\u00b2", "--entry", "dir /x 0755 0 0", "-o", "{out}/a.cpio"],
    ["initramfs", "--mtime", "-5", "--entry", "dir /x 0755 0 0", "-o", "{out}/a.cpio"],
    ["initramfs", "--file", "h:/x:abc", "-o", "{out}/a.cpio"],
    ["initramfs", "--file", "{seed:list}:/x:777777", "-o", "{out}/a.cpio"],
    ["initramfs", "--file", "/dev/zero:/x", "-o", "{out}/a.cpio"],
    ["initramfs", "--level", "99", "--entry", "dir /x 0755 0 0", "-o", "{out}/a.cpio.zst"],
    ["initramfs", "--level", "99", "--entry", "dir /x 0755 0 0", "-o", "{out}/a.cpio.gz"],
    ["initramfs", "--level", "-3", "--compress", "xz", "--entry", "dir /x 0755 0 0", "-o",
     "{out}/a.cpio.xz"],
    ["initramfs", "--entry", "dir /x 0755 0 0", "-o", "{out}"],
    ["initramfs", "--entry", "dir /x 0755 0 0", "-o", "{out}/missing/a.cpio"],
    ["initramfs", "--entry", "dir /x 0755 0 0", "-o", "{out}/" + "n" * 300],
    ["initramfs", "--entry", "dir /" + "/".join(["d" * 200] * 30) + " 0755 0 0", "-o",
     "{out}/a.cpio"],
    ["initramfs", "--entry", "nod /x 0600 0 0 c 1099511627776 1", "-o", "{out}/a.cpio"],
    ["tar", "--entry", "nod /dev/x 0600 0 0 c 1099511627776 1", "-o", "{out}/a.tar"],
    ["tar", "--entry", "dir /x 0755 4294967296 0", "-o", "{out}/a.tar"],
    ["tar", "--entry", "dir /x 0755 18446744073709551616 0", "-o", "{out}/a.tar"],
    ["tar", "--entry", "nod /dev/x 0600 0 0 b 0 4294967296", "-o", "{out}/a.tar"],
    ["initramfs", "--uid-map", "0 \u00b2 1", "--entry", "dir /x 0755 0 0", "-o", "{out}/a.cpio"],
    ["initramfs", "--root-uid", "\u00b2", "--entry", "dir /x 0755 0 0", "-o", "{out}/a.cpio"],
    ["initramfs", "/dev/zero", "-o", "{out}/a.cpio"],
    ["initramfs", "{fifo}", "-o", "{out}/a.cpio"],
    ["inspect", "{fifo}"], ["ls", "{fifo}"], ["build", "{fifo}", "-O", "{out}"],
    ["run", "--timeout", "-1", "--kernel", "{seed:uki}"],
    ["run", "--timeout", "nan", "--kernel", "{seed:uki}"],
    ["run", "--kernel", "{seed:cpio.gz}", "--print-cmdline"],
    ["run", "--kernel", "{seed:gpt}", "--print-cmdline"],
    ["run", "--kernel", "/dev/zero", "--print-cmdline"],
    ["build", "/nonexistent.toml", "-O", "{out}"],
    ["build", "{seed:list}", "-O", "{out}"],
    ["ls", "{zeros}"], ["inspect", "{zeros}"], ["ls", "{empty}"], ["inspect", "{empty}"],
    ["ls", "{seed:gpt}:9"], ["ls", "{seed:gpt}:nope"], ["ls", "{seed:fat}:1"],
    ["ls", "{seed:gpt}"], ["nosuchcommand"], ["inspect", "--nosuchoption", "x"],
]


def make_cases(seeds: dict[str, Path], work: Path, count: int, seed: int) -> list[dict]:
    """``count`` cases: mutated images for ``inspect`` and ``ls``, some given to ``initramfs``
    as a source, then every bad config and bad argument list."""
    rng = random.Random(seed)
    cases_dir = work / "cases"
    cases_dir.mkdir(parents=True, exist_ok=True)
    originals = {k: p.read_bytes() for k, p in seeds.items()}
    cases: list[dict] = []
    fixed = _fixed_cases(seeds, work)
    kinds = sorted(originals)
    for i in range(max(0, count - len(fixed))):
        kind = kinds[i % len(kinds)]
        how, data = mutate(rng, kind, originals[kind])
        path = cases_dir / f"{i:05d}-{kind}"
        path.write_bytes(data)
        command = rng.choice(["inspect", "ls", "ls", "inspect-json", "source"])
        if kind in ("gpt", "mbr", "fixture-gpt", "fixture-mbr", "fixture-genimage", "qcow2") \
                and command == "ls":
            command = "ls-part"
        if kind == "list":
            command = "source"
        if command == "inspect":
            argv = ["inspect", str(path)]
        elif command == "inspect-json":
            argv = ["inspect", "--json", str(path)]
        elif command == "ls-part":
            argv = ["ls", f"{path}:{rng.choice(['1', '2', '5', 'root', 'esp'])}"]
        elif command == "ls":
            argv = ["ls", str(path)]
        else:
            argv = ["initramfs", str(path), "-o", "{out}/x.cpio", "--compress", "none"]
        cases.append({"name": f"{kind}: {how} ({command})", "argv": argv})
    return cases + fixed


def _fixed_cases(seeds: dict[str, Path], work: Path) -> list[dict]:
    special = work / "special"
    special.mkdir(parents=True, exist_ok=True)
    fifo = special / "fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    (special / "zeros").write_bytes(bytes(1 << 20))
    (special / "empty").write_bytes(b"")
    subst = {"{fifo}": str(fifo), "{zeros}": str(special / "zeros"),
             "{empty}": str(special / "empty")}
    subst.update({f"{{seed:{k}}}": str(p) for k, p in seeds.items()})
    cases = []
    for n, argv in enumerate(BAD_ARGS):
        out = []
        for a in argv:
            for key, value in subst.items():
                a = a.replace(key, value)
            out.append(a)
        cases.append({"name": f"argv {n}: {' '.join(argv)[:80]}", "argv": out})
    hello = special / "hello"
    hello.write_text("hello\n")
    for n, text in enumerate(HOSTILE_LISTS):
        lst = special / f"list{n}.txt"
        lst.write_bytes(text.format(hello=hello, fifo=fifo).encode("utf-8", "surrogateescape")
                        .replace(b"\xc3\xbf\xc3\xbe", b"\xff\xfe"))
        cases.append({"name": f"list {n}: {text[:60]!r}",
                      "argv": ["initramfs", str(lst), "-o", "{out}/l.cpio", "--compress", "none"]})
    for n, text in enumerate([t.encode() for t in BAD_CONFIGS] + BAD_CONFIG_BYTES):
        cfg = special / f"bad{n}.toml"
        cfg.write_bytes(text)
        cases.append({"name": f"config {n}: {text[:60]!r}", "argv": ["build", str(cfg), "-O", "{out}"]})
    return cases


# -- the worker -------------------------------------------------------------------------------

class Hang(BaseException):
    """The case ran past :data:`TIME_LIMIT` (BaseException: the CLI must not catch it)."""


def _children() -> list[int]:
    me, kids = os.getpid(), []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z":
            kids.append(int(pid))
    return kids


def _listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def run_case(case: dict, out_dir: Path, tmp_dir: Path, cwd: Path) -> dict:
    """Run one case in this process; what it printed, how it ended, what it left behind."""
    import signal

    from imgkit.cli import main

    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir()
    beside = set(os.listdir(out_dir.parent))
    argv = [a.replace("{out}", str(out_dir)) for a in case["argv"]]
    stdout, stderr = io.StringIO(), io.StringIO()

    def expire(*_: object) -> None:
        raise Hang()

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, TIME_LIMIT)
    started = time.monotonic()
    rc: int | str
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                rc = main(argv)
            except SystemExit as exc:   # argparse's usage errors
                rc = exc.code if isinstance(exc.code, int) else 2
    except Hang:
        rc = "hang"
    except BaseException as exc:   # anything the CLI let through is a traceback
        import traceback
        rc = "traceback"
        stderr.write("Traceback (most recent call last):\n" + "".join(
            traceback.format_exception(exc)))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    elapsed = time.monotonic() - started
    import gc
    gc.collect()
    left_children = _children()
    for pid in left_children:
        with contextlib.suppress(OSError):
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    result = {"name": case["name"], "argv": argv, "rc": rc, "stderr": stderr.getvalue()[-4000:],
              "stdout_len": len(stdout.getvalue()), "seconds": round(elapsed, 3),
              "out": _listing(out_dir), "tmp": _listing(tmp_dir),
              "cwd": _listing(cwd) + sorted(set(os.listdir(out_dir.parent)) - beside),
              "children": left_children}
    for leftover in (tmp_dir, cwd):
        for p in leftover.iterdir():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
    return result


def worker(cases_file: str, results_file: str) -> None:
    """Run every case of ``cases_file`` (JSON) under the limits; write the results (JSON)."""
    import resource
    import tempfile

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    cases = json.loads(Path(cases_file).read_text())
    base = Path(results_file).parent
    tmp_dir, cwd, out_dir = base / "tmp", base / "cwd", base / "out"
    for d in (tmp_dir, cwd):
        d.mkdir(exist_ok=True)
    os.environ["TMPDIR"] = str(tmp_dir)
    tempfile.tempdir = None
    os.chdir(cwd)
    results = [run_case(c, out_dir, tmp_dir, cwd) for c in cases]
    Path(results_file).write_text(json.dumps(results))


def run_worker(cases: list[dict], base: Path, timeout: float) -> list[dict]:
    """Run ``cases`` in a worker process (its own limits) and return its results."""
    base.mkdir(parents=True, exist_ok=True)
    cases_file, results_file = base / "cases.json", base / "results.json"
    cases_file.write_text(json.dumps(cases))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"))
    subprocess.run([sys.executable, str(Path(__file__)), str(cases_file), str(results_file)],
                   check=True, timeout=timeout, env=env, cwd=base)
    return json.loads(results_file.read_text())


# -- judging ----------------------------------------------------------------------------------

def verdict(r: dict) -> str:
    """``clean``, or the first problem: traceback, hang, memory, partial, leak, escape."""
    if r["rc"] == "hang" or r["seconds"] > TIME_LIMIT:
        return "hang"
    if r["rc"] == "traceback" or "Traceback" in r["stderr"]:
        return "traceback"
    if "out of memory" in r["stderr"]:
        return "memory"
    if r["tmp"] or r["children"]:
        return "leak"
    if r["cwd"]:
        return "escape"
    if r["rc"] == 0:
        return "clean"
    if r["rc"] not in (1, 2) or len(ERROR_LINE.findall(r["stderr"])) != 1:
        return "bad-error"
    if r["out"]:
        return "partial"
    return "clean"


def table(results: list[dict]) -> dict[str, int]:
    counts = {"tried": len(results), "clean": 0, "traceback": 0, "hang": 0, "memory": 0,
              "partial": 0, "leak": 0, "escape": 0, "bad-error": 0}
    for r in results:
        counts[verdict(r)] += 1
    return counts


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2])
