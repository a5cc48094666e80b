#!/usr/bin/env python3
"""The ext4 and GPT disk sections of the benchmark, and the small programs they run.

Four sections, each imgkit beside the tool it replaces, in one run:

* ``ext4``: :func:`imgkit.formats.ext4.write_ext4` on the benchmark tree against
  ``mke2fs -t ext4 -d`` on the same directory;
* ``ext4-tar``: the same from a real Debian root given as a tar (the one tests/test_debian.py
  caches), against ``mke2fs -d`` of that tar extracted (the extraction, made once and cached,
  is not timed); the peak scratch space (everything imgkit writes but the image) is measured
  in a separate, untimed run;
* ``disk``: ``imgkit build`` of a GPT disk (vfat ESP + ext4 root) against genimage;
* ``disk-debian``: the Debian tar into the same GPT disk, against genimage from the
  extracted directory.

imgkit runs twice: with the e2fsprogs it chooses (the host's 1.47.0 reads no archive, so
bookworm-backports' 1.47.1 or newer, fetched once), and with the host's whatever its version
(``IMGKIT_E2FSPROGS=host``).

    python bench/ext4.py write SOURCE OUT SIZE     write_ext4 of a directory or an archive
    python bench/ext4.py scratch JSON DIRS OUT -- CMD...   CMD's peak scratch use under DIRS
"""
from __future__ import annotations

import glob
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import trees  # noqa: E402
from measure import Command  # noqa: E402

MiB = 1 << 20
IMGKIT = [sys.executable, "-m", "imgkit"]
ME = [sys.executable, os.path.abspath(__file__)]
ESP_UUID = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
ROOT_UUID = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"


# -- inputs -----------------------------------------------------------------------------------

def ext4_size(stats: trees.TreeStats) -> int:
    """A roomy ext4 size for a tree, in bytes, a multiple of 16 MiB (used by both sides)."""
    entries = stats.files + stats.dirs + stats.symlinks + stats.other
    need = stats.bytes * 1.25 + entries * 4096 + 48 * MiB
    return int(-(-need // (16 * MiB)) * 16 * MiB)


def _payload(path: str, size: int, seed: int) -> str:
    """A file of ``size`` incompressible bytes (kernel- or initrd-like), made once."""
    if not os.path.exists(path) or os.path.getsize(path) != size:
        rnd = random.Random(seed)
        with open(path + ".tmp", "wb") as f:
            left = size
            while left:
                n = min(left, 4 * MiB)
                f.write(rnd.randbytes(n))
                left -= n
        os.replace(path + ".tmp", path)
    return path


def _cache_base() -> str:
    """``$IMGKIT_CACHE`` (``make bench`` sets it), else ``~/.cache/imgkit``, as trees.py."""
    return os.environ.get("IMGKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                            "imgkit")


def debian_tar() -> str | None:
    """The Debian root tar tests/test_debian.py caches (the newest, if several)."""
    base = _cache_base()
    found = sorted(glob.glob(os.path.join(base, "debian-roots", "*.tar")), key=os.path.getmtime)
    return found[-1] if found else None


def debian_dir(tar: str) -> str:
    """``tar`` extracted once (owners and xattrs kept when run as root), cached."""
    dest = os.path.join(trees.cache_dir(), "debian-" + os.path.basename(tar)[:-4])
    if os.path.exists(dest + ".complete"):
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    trees.log(f"extracting {tar} into {dest} (once)...")
    keep = ["--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "-p"] \
        if os.geteuid() == 0 else []
    subprocess.run(["tar", *keep, "-xf", tar, "-C", dest], check=True)
    open(dest + ".complete", "w").close()
    return dest


def _imgkit_rows(name: str, argv: list[str], outputs: tuple[str, ...], **kw) -> list[Command]:
    """imgkit as users run it (its own choice of e2fsprogs: the backports one where the host's
    reads no archive), and again with the host's e2fsprogs whatever its version."""
    return [Command(name, argv, outputs, env={"IMGKIT_E2FSPROGS": ""}, **kw),
            Command(name + " (host's e2fsprogs)", argv, outputs,
                    env={"IMGKIT_E2FSPROGS": "host"}, **kw)]


# -- sections ---------------------------------------------------------------------------------

def ext4_sections(tree: str, out: str, stats: trees.TreeStats) -> list:
    """``ext4`` (the benchmark tree) and ``ext4-tar`` (the Debian tar), as run.py Sections."""
    from run import Section, Target, missing

    size = ext4_size(stats)
    o = lambda n: os.path.join(out, n)  # noqa: E731
    s = Section("ext4", f"ext4 image of {size // MiB} MiB from a directory")
    s.cmds += _imgkit_rows("imgkit write_ext4", ME + ["write", tree, o("imgkit.ext4"), str(size)],
                           (o("imgkit.ext4"),))
    if not missing(s, "mke2fs"):
        s.cmds.append(Command("mke2fs -t ext4 -d", ["mke2fs", "-q", "-F", "-t", "ext4", "-d", tree,
                                                    o("mke2fs.ext4"), f"{size // 1024}k"],
                              (o("mke2fs.ext4"),)))
        for c in s.cmds[:-1]:
            s.targets.append(Target(f"{c.name} <= 1.2x mke2fs -d", c.name, "mke2fs -t ext4 -d",
                                    1.2))
    s.targets.append(Target("imgkit write_ext4 peak RSS < 100 MB", s.cmds[0].name,
                            max_rss_mb=100))
    out_secs = [s]

    t = Section("ext4-tar", "ext4 from a Debian root tar")
    out_secs.append(t)
    tar = debian_tar()
    if tar is None:
        t.notes.append("no cached Debian root tar: run tests/test_debian.py once as root")
        return out_secs
    extracted = debian_dir(tar)
    trees.warm(extracted)
    dstats = trees.tree_stats(extracted)
    dsize = ext4_size(dstats)
    t.title = (f"ext4 image of {dsize // MiB} MiB from a Debian root tar "
               f"({dstats.line()}), against mke2fs -d of it extracted")
    t.cmds += _imgkit_rows("imgkit write_ext4 (tar)", ME + ["write", tar, o("tar.ext4"),
                                                            str(dsize)], (o("tar.ext4"),))
    if not missing(t, "mke2fs"):
        ref = "mke2fs -d (extracted)"
        t.cmds.append(Command(ref, ["mke2fs", "-q", "-F", "-t", "ext4", "-d", extracted,
                                    o("mke2fs-deb.ext4"), f"{dsize // 1024}k"],
                              (o("mke2fs-deb.ext4"),)))
        for c in t.cmds[:-1]:
            t.targets.append(Target(f"{c.name} <= 1.2x mke2fs -d", c.name, ref, 1.2))
    for c in t.cmds[:-1]:
        t.targets.append(Target(f"{c.name} peak RSS < 100 MB", c.name, max_rss_mb=100))
    t.after = lambda sec: _scratch_notes(sec, out, dstats.bytes)
    return out_secs


def disk_sections(tree: str, out: str, stats: trees.TreeStats) -> list:
    """``disk`` (the benchmark tree) and ``disk-debian`` (the Debian tar), as run.py Sections."""
    from run import Section, Target, missing

    inputs = os.path.join(trees.cache_dir(), "inputs")
    os.makedirs(inputs, exist_ok=True)
    _payload(os.path.join(inputs, "vmlinuz"), 8 * MiB, 1)
    _payload(os.path.join(inputs, "initrd.img"), 24 * MiB, 2)
    have_genimage = not missing_quiet("genimage", "mkdosfs", "mcopy", "mke2fs", "e2fsck")

    def one(name: str, title: str, source: str, rootpath: str, root_size: int,
            target: float) -> object:
        s = Section(name, title)
        if not have_genimage:
            missing(s, "genimage", "mkdosfs", "mcopy", "mke2fs", "e2fsck")
        work = os.path.join(out, name)
        os.makedirs(work, exist_ok=True)
        cfg = os.path.join(work, "imgkit.toml")
        with open(cfg, "w") as f:
            f.write(_IMGKIT_DISK.format(vmlinuz=json.dumps(os.path.join(inputs, "vmlinuz")),
                                        initrd=json.dumps(os.path.join(inputs, "initrd.img")),
                                        source=json.dumps(source), size=root_size))
        mine = os.path.join(work, "imgkit-out")
        s.cmds += _imgkit_rows("imgkit build", IMGKIT + ["build", "-q", cfg, "-O", mine],
                               (mine,))
        if have_genimage:
            gcfg = os.path.join(work, "genimage.cfg")
            with open(gcfg, "w") as f:
                f.write(_GENIMAGE_DISK.format(size=root_size // 1024, esp=ESP_UUID,
                                              root=ROOT_UUID))
            g_out, g_tmp = os.path.join(work, "genimage-out"), os.path.join(work, "genimage-tmp")

            def fresh(g_out: str = g_out, g_tmp: str = g_tmp) -> None:
                shutil.rmtree(g_tmp, ignore_errors=True)
                os.makedirs(g_out, exist_ok=True)

            s.cmds.append(Command("genimage", ["genimage", "--config", gcfg, "--rootpath",
                                               rootpath, "--tmppath", g_tmp, "--inputpath",
                                               inputs, "--outputpath", g_out],
                                  (g_out, g_tmp), prepare=fresh))
            for c in s.cmds[:-1]:
                s.targets.append(Target(f"{c.name} <= {target}x genimage", c.name, "genimage",
                                        target))
        s.targets.append(Target("imgkit build peak RSS < 100 MB", s.cmds[0].name,
                                max_rss_mb=100))
        s.after = lambda sec: _disk_usage(sec, mine, g_out if have_genimage else None)
        return s

    root_size = ext4_size(stats)
    secs = [one("disk", f"GPT disk: 64 MiB vfat ESP (8 + 24 MiB files) + {root_size // MiB} MiB "
                        "ext4 root", tree, tree, root_size, 0.8)]
    tar = debian_tar()
    if tar is None:
        from run import Section as _S
        secs.append(_S("disk-debian", "GPT disk from a Debian root tar",
                       notes=["no cached Debian root tar: run tests/test_debian.py once as root"]))
        return secs
    extracted = debian_dir(tar)
    trees.warm(extracted)
    dsize = ext4_size(trees.tree_stats(extracted))
    secs.append(one("disk-debian", f"GPT disk from the Debian root tar ({dsize // MiB} MiB "
                                   "ext4 root), against genimage from it extracted",
                    tar, extracted, dsize, 1.0))
    return secs


def missing_quiet(*tools: str) -> list[str]:
    from run import have
    return [t for t in tools if not have(t)]


_IMGKIT_DISK = """seed = "bench"

[trees.esp]
files = {{ "vmlinuz" = {vmlinuz}, "initrd.img" = {initrd} }}

[trees.root]
sources = [{source}]

[filesystems.esp]
type = "vfat"
tree = "esp"
size = "64M"

[filesystems.root]
type = "ext4"
tree = "root"
size = "{size}"

[disk]
output = "disk.img"
table = "gpt"
partitions = [
  {{ name = "esp", type = "esp", filesystem = "esp" }},
  {{ name = "root", type = "root-x86-64", filesystem = "root" }},
]
"""

_GENIMAGE_DISK = """image esp.vfat {{
\tvfat {{
\t\tfiles = {{ "vmlinuz", "initrd.img" }}
\t}}
\tsize = 64M
}}

image root.ext4 {{
\text4 {{
\t\tuse-mke2fs = true
\t}}
\tsize = {size}K
}}

image disk.img {{
\thdimage {{
\t\tpartition-table-type = "gpt"
\t}}
\tpartition esp {{
\t\timage = "esp.vfat"
\t\tpartition-type-uuid = "{esp}"
\t}}
\tpartition root {{
\t\timage = "root.ext4"
\t\tpartition-type-uuid = "{root}"
\t}}
}}
"""


def _disk_usage(sec, mine: str, g_out: str | None) -> None:
    for name, path in (("imgkit build", os.path.join(mine, "disk.img")),
                       ("genimage", os.path.join(g_out, "disk.img") if g_out else "")):
        if path and os.path.exists(path):
            st = os.stat(path)
            sec.extra.setdefault("disk_usage", {})[name] = {
                "apparent_bytes": st.st_size, "allocated_bytes": st.st_blocks * 512}


def _scratch_notes(sec, out: str, tree_bytes: int) -> None:
    """Run each imgkit row once more (untimed) under the scratch sampler, with its own
    ``$TMPDIR`` and output directory (``... OUT SIZE`` rows); note the peaks."""
    for c in sec.cmds:
        if not c.name.startswith("imgkit"):
            continue
        work = tempfile.mkdtemp(prefix="scratch-", dir=out)
        report = os.path.join(work, "report.json")
        tmp, dest = os.path.join(work, "tmp"), os.path.join(work, "out")
        os.makedirs(tmp)
        os.makedirs(dest)
        image = os.path.join(dest, os.path.basename(c.argv[-2]))
        argv = ME + ["scratch", report, f"{tmp},{dest}", image, "--",
                     *c.argv[:-2], image, c.argv[-1]]
        env = {**os.environ, **(c.env or {}), "TMPDIR": tmp}
        try:
            subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=c.timeout)
            with open(report) as f:
                peak = json.load(f)["peak_bytes"]
            ratio = peak / tree_bytes
            verdict = "PASS" if ratio <= 1.1 else "MISS"
            sec.notes.append(f"{c.name}: peak scratch {peak / MiB:,.0f} MiB = {ratio:.2f}x the "
                             f"tree's {tree_bytes / MiB:,.0f} MiB (target <= 1.1x: {verdict})")
            sec.extra.setdefault("peak_scratch_bytes", {})[c.name] = peak
        except (OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
            sec.notes.append(f"{c.name}: scratch not measured: {exc}")
        finally:
            shutil.rmtree(work, ignore_errors=True)


# -- the programs the sections run --------------------------------------------------------------

def write(source: str, out: str, size: int) -> None:
    """write_ext4 of a directory or an archive, in a scratch directory as the CLI runs it."""
    from imgkit import scratch
    from imgkit.formats.ext4 import write_ext4
    from imgkit.sources import read_directory
    from imgkit.sources.archive import read_archive
    with scratch.run_scratch():
        tree = read_directory(source) if os.path.isdir(source) else read_archive(source)
        write_ext4(tree, out, size=size)


def allocated(dirs: list[str], exclude: str) -> int:
    """Bytes allocated to files under ``dirs``, but ``exclude`` and its temporary siblings."""
    total = 0
    name = os.path.basename(exclude)
    for d in dirs:
        for dirpath, _dirnames, filenames in os.walk(d):
            for n in filenames:
                if n == name or (n.startswith("." + name) and dirpath == os.path.dirname(exclude)):
                    continue   # the output itself (or its temporary name), not scratch
                try:
                    total += os.lstat(os.path.join(dirpath, n)).st_blocks * 512
                except OSError:
                    pass
    return total


def scratch_peak(report: str, dirs: list[str], exclude: str, argv: list[str]) -> int:
    """Run ``argv``, sampling the scratch use under ``dirs`` ten times a second."""
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], allocated(dirs, exclude))
            time.sleep(0.1)

    th = threading.Thread(target=sample)
    th.start()
    try:
        rc = subprocess.run(argv).returncode
    finally:
        done.set()
        th.join()
    with open(report, "w") as f:
        json.dump({"peak_bytes": peak[0], "returncode": rc}, f)
    return rc


def main(argv: list[str]) -> int:
    what, *args = argv
    if what == "write":
        write(args[0], args[1], int(args[2]))
        return 0
    if what == "scratch":
        report, dirs, exclude, sep, *cmd = args
        assert sep == "--", "usage: scratch JSON DIRS OUT -- CMD..."
        return scratch_peak(report, dirs.split(","), exclude, cmd)
    print(f"ext4.py: unknown command {what!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
