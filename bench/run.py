#!/usr/bin/env python3
"""imgkit against the tools it replaces, side by side on one realistic tree.

Every contender runs as its own process, interleaved with the others (A B C A B C ...), on a
warm page cache; we report the median wall time, the peak RSS and the *ratio* imgkit / other,
measured in this one run. Absolute times on a shared machine mean little; ratios taken in the
same minute do. A section whose tool is missing, or whose command fails, says so and the
benchmark goes on.

    python bench/run.py [--runs N] [--only SECTION[,SECTION]] [--tree DIR] [--quick] [--json FILE]

Sections: startup, initramfs, tar, fat, iso, ext4, squashfs, erofs, disk, virt, scale (linear
at scale: 1k, 10k, 100k files and one directory of 20k). ``--quick`` (or
``IMGKIT_BENCH_QUICK=1``) uses the host's Python library as the tree and smaller scale trees,
so a run takes minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import ext4  # noqa: E402
import startup  # noqa: E402
import trees  # noqa: E402
from measure import Command, Result, clear, measure  # noqa: E402

SECTIONS = ("startup", "initramfs", "tar", "fat", "iso", "ext4", "squashfs", "erofs", "disk",
            "virt", "scale")
#: Sections that measure no file tree (the benchmark tree is built only for the others).
TREELESS = ("startup", "virt", "scale")
IMGKIT = [sys.executable, "-m", "imgkit"]
HELPER = [sys.executable, os.path.join(HERE, "helpers.py")]
MiB = 1 << 20
q = shlex.quote


@dataclass
class Target:
    """``imgkit`` row / ``ref`` row <= ``max_ratio`` (median times, or with ``measure="bytes"``
    output sizes); with ref None, peak RSS <= max_rss_mb or the median wall time <=
    max_seconds. These are the issue's targets: ratios taken side by side in one run."""

    text: str
    imgkit: str
    ref: str | None = None
    max_ratio: float | None = None
    max_rss_mb: float | None = None
    max_seconds: float | None = None
    measure: str = "seconds"
    value: float | None = None
    passed: bool | None = None

    def check(self, results: dict[str, Result], extra: dict | None = None) -> None:
        me = results.get(self.imgkit)
        if me is None or not me.ok:
            return
        if self.max_seconds is not None:
            self.value = me.seconds
            self.passed = self.value <= self.max_seconds  # type: ignore[operator]
            return
        if self.ref is None:
            self.value = me.rss_mb
            self.passed = self.value <= self.max_rss_mb  # type: ignore[operator]
            return
        if self.measure == "bytes":
            sizes = (extra or {}).get("output_bytes", {})
            if sizes.get(self.imgkit) and sizes.get(self.ref):
                self.value = sizes[self.imgkit] / sizes[self.ref]
                self.passed = self.value <= self.max_ratio  # type: ignore[operator]
            return
        other = results.get(self.ref)
        if other is None or not other.ok or not other.seconds:
            return
        self.value = me.seconds / other.seconds  # type: ignore[operator]
        self.passed = self.value <= self.max_ratio  # type: ignore[operator]

    def as_dict(self) -> dict:
        return {"target": self.text, "value": self.value, "passed": self.passed}


@dataclass
class Section:
    name: str
    title: str
    cmds: list[Command] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    results: dict[str, Result] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    after: object = None  # callable(section) run after measuring, e.g. to look at outputs
    runs: int | None = None  # runs per command, when not the benchmark's --runs


def have(tool: str) -> bool:
    return shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is not None


def missing(section: Section, *tools: str) -> list[str]:
    gone = [t for t in tools if not have(t)]
    for t in gone:
        section.notes.append(f"{t} not found: its row is left out (apt-get install the package "
                             f"that provides it; see packages.txt)")
    return gone


# -- sections ---------------------------------------------------------------------------------

def sec_startup(out: str, runs: int) -> list[Section]:
    """Start-up: short commands, so more runs than the other sections."""
    n = max(10, 5 * runs)
    ver = Section("startup", "start-up: imgkit --version (installed wheel)", runs=n)
    disk = Section("startup-disk", "start-up: imgkit build of a GPT disk with two empty 1 MiB "
                                   "partitions", runs=n)
    gone = missing(disk, "genimage")
    ver.cmds, disk.cmds, notes = startup.commands(out, have_genimage=not gone)
    ver.notes += notes
    me = ver.cmds[0].name
    ver.targets += [Target("imgkit --version <= 40 ms", me, max_seconds=0.040)]
    if not gone:
        disk.targets.append(Target("imgkit build <= 3x genimage", disk.cmds[0].name,
                                   disk.cmds[1].name, 3.0))
    return [ver, disk, sec_rebuild(out, n)]


def sec_rebuild(out: str, runs: int) -> Section:
    """Incremental builds of a copy of the demo, its artifacts in the cache: nothing changed
    (everything taken from it), and one file of the root tree changed before each run."""
    sec = Section("startup-rebuild", "rebuild of examples/demo.toml from the artifact cache",
                  runs=runs)
    demo = os.path.join(out, "rebuild-demo")
    examples = os.path.join(HERE, "..", "examples")
    shutil.copytree(examples, demo, symlinks=True)
    argv = IMGKIT + ["build", "-q", os.path.join(demo, "demo.toml"), "-O", os.path.join(out, "rb")]
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
    env.pop("IMGKIT_CACHE_LIMIT", None)   # the cache is what this section measures
    warm = [False]

    def warm_once() -> None:
        if not warm[0]:
            subprocess.run(argv, env=env, check=True)
            warm[0] = True

    def change_one_file() -> None:
        warm_once()
        with open(os.path.join(demo, "demo-rootfs", "etc", "os-release"), "a") as f:
            f.write("# changed\n")
    sec.cmds += [Command("rebuild, nothing changed", argv, env=env, prepare=warm_once),
                 Command("rebuild, one root file changed", argv, env=env, prepare=change_one_file)]
    sec.targets.append(Target("rebuild, nothing changed <= 0.3 s", sec.cmds[0].name,
                              max_seconds=0.3))
    return sec


def sec_initramfs(tree: str, out: str) -> list[Section]:
    raw = Section("initramfs", "initramfs: newc cpio, no compression")
    o = lambda n: os.path.join(out, n)  # noqa: E731
    raw.cmds.append(Command("imgkit initramfs --compress none",
                            IMGKIT + ["initramfs", tree, "-o", o("imgkit.cpio"),
                                      "--compress", "none"], (o("imgkit.cpio"),)))
    gone = missing(raw, "cpio", "bsdtar")
    if "cpio" not in gone:
        raw.cmds.append(Command("find | cpio -o -H newc",
                                f"find . | cpio -o -H newc --quiet > {q(o('cpio.cpio'))}",
                                (o("cpio.cpio"),), cwd=tree))
    if "bsdtar" not in gone:
        raw.cmds.append(Command("bsdtar --format newc", ["bsdtar", "--format", "newc", "-cf",
                                                         o("bsdtar.cpio"), "-C", tree, "."],
                                (o("bsdtar.cpio"),)))
    raw.cmds.append(Command("python copy_file_range floor", HELPER + ["copy", tree, o("floor")],
                            (o("floor"),)))
    me = raw.cmds[0].name
    raw.targets += [Target("imgkit <= bsdtar", me, "bsdtar --format newc", 1.0),
                    Target("imgkit <= 1.3x python copy floor", me,
                           "python copy_file_range floor", 1.3),
                    Target("imgkit peak RSS <= 100 MB", me, max_rss_mb=100)]

    z = Section("initramfs-zstd", "initramfs: newc cpio, zstd -3")
    z.cmds.append(Command("imgkit initramfs --compress zstd",
                          IMGKIT + ["initramfs", tree, "-o", o("imgkit.cpio.zst"),
                                    "--compress", "zstd"], (o("imgkit.cpio.zst"),)))
    gone = missing(z, "bsdtar", "zstd")
    if not gone:
        z.cmds.append(Command("bsdtar newc | zstd -T0 -3",
                              f"set -o pipefail; bsdtar --format newc -cf - -C {q(tree)} . "
                              f"| zstd -T0 -3 -q > {q(o('bsdtar.cpio.zst'))}",
                              (o("bsdtar.cpio.zst"),)))
    z.targets += [Target("imgkit zstd <= bsdtar | zstd -T0 -3", z.cmds[0].name,
                         "bsdtar newc | zstd -T0 -3", 1.0),
                  Target("imgkit zstd output <= bsdtar | zstd -T0 -3's", z.cmds[0].name,
                         "bsdtar newc | zstd -T0 -3", 1.0, measure="bytes"),
                  Target("imgkit zstd peak RSS <= 100 MB", z.cmds[0].name, max_rss_mb=100)]

    def sizes(sec: Section) -> None:
        for c in sec.cmds:
            if c.outputs and os.path.exists(c.outputs[0]):
                sec.extra.setdefault("output_bytes", {})[c.name] = os.path.getsize(c.outputs[0])
    raw.after = z.after = sizes
    return [raw, z]


def sec_tar(tree: str, out: str) -> list[Section]:
    s = Section("tar", "tar (no compression)")
    o = lambda n: os.path.join(out, n)  # noqa: E731
    s.cmds.append(Command("imgkit tar", IMGKIT + ["tar", tree, "-o", o("imgkit.tar")],
                          (o("imgkit.tar"),)))
    gone = missing(s, "tar", "bsdtar")
    if "tar" not in gone:
        s.cmds.append(Command("GNU tar -cf", ["tar", "-cf", o("gnu.tar"), "-C", tree, "."],
                              (o("gnu.tar"),)))
    if "bsdtar" not in gone:
        s.cmds.append(Command("bsdtar -cf", ["bsdtar", "-cf", o("bsd.tar"), "-C", tree, "."],
                              (o("bsd.tar"),)))
        s.targets.append(Target("imgkit tar <= bsdtar", s.cmds[0].name, "bsdtar -cf", 1.0))
    s.targets.append(Target("imgkit tar peak RSS <= 100 MB", s.cmds[0].name, max_rss_mb=100))
    return [s]


def _fat_kib(root: str) -> int:
    """A mkfs.vfat size (KiB) that holds ``root`` with 4 KiB clusters and some room."""
    used = 0
    for dirpath, dirnames, filenames in os.walk(root):
        used += 8192 + 64 * (len(dirnames) + len(filenames))
        for n in filenames:
            used += -(-os.lstat(os.path.join(dirpath, n)).st_size // 4096) * 4096
    return int(used * 1.10 + 4 * MiB) // 1024


def sec_fat(fat_tree: str, out: str) -> list[Section]:
    stats = trees.tree_stats(fat_tree)
    s = Section("fat", f"FAT from a {stats.files:,}-file, {stats.bytes / 1e6:.0f} MB tree "
                       "(regular files only)")
    s.extra["tree"] = stats.as_dict()
    o = lambda n: os.path.join(out, n)  # noqa: E731
    s.cmds.append(Command("imgkit write_fat (auto size)",
                          HELPER + ["fat", fat_tree, o("imgkit.fat")], (o("imgkit.fat"),)))
    s.cmds.append(Command("python start-up + import (floor)", HELPER + ["import", "fat"]))
    if not missing(s, "mkfs.vfat", "mcopy"):
        kib = _fat_kib(fat_tree)
        top = " ".join(q(os.path.join(fat_tree, n)) for n in sorted(os.listdir(fat_tree)))
        s.cmds.append(Command(f"mkfs.vfat -C + mcopy -s ({kib // 1024} MiB)",
                              f"set -e; mkfs.vfat -C {q(o('mtools.fat'))} {kib} >/dev/null; "
                              f"mcopy -s -i {q(o('mtools.fat'))} {top} ::",
                              (o("mtools.fat"),), env={"MTOOLS_SKIP_CHECK": "1"}))
        s.targets.append(Target("imgkit FAT <= mkfs.vfat + mcopy (start-up included)",
                                s.cmds[0].name, s.cmds[-1].name, 1.0))
    s.targets.append(Target("imgkit FAT peak RSS <= 100 MB", s.cmds[0].name, max_rss_mb=100))
    return [s]


def sec_iso(tree: str, out: str) -> list[Section]:
    s = Section("iso", "ISO 9660 with Rock Ridge and Joliet")
    o = lambda n: os.path.join(out, n)  # noqa: E731
    s.cmds.append(Command("imgkit write_iso", HELPER + ["iso", tree, o("imgkit.iso")],
                          (o("imgkit.iso"),)))
    if not missing(s, "xorriso"):
        s.cmds.append(Command("xorriso -as mkisofs -R -J",
                              ["xorriso", "-as", "mkisofs", "-quiet", "-R", "-J", "-o",
                               o("xorriso.iso"), tree], (o("xorriso.iso"),)))
        s.targets.append(Target("imgkit ISO <= 1.2x xorriso -as mkisofs -R -J", s.cmds[0].name,
                                s.cmds[1].name, 1.2))
    s.targets.append(Target("imgkit ISO peak RSS <= 100 MB", s.cmds[0].name, max_rss_mb=100))
    return [s]


#: Per-file time at the largest tree over that at 10k files above which a writer is flagged
#: as growing with the count (noise on a shared machine stays well below it).
GROWTH_LIMIT = 1.5


def sec_scale(out: str, quick: bool) -> list[Section]:
    """Linear at scale: each writer on trees of 1k, 10k and 100k files, and on one directory
    of many files; the time per file must not grow with the count."""
    shapes = trees.SCALE_TREES_QUICK if quick else trees.SCALE_TREES
    made = [(name, n, trees.scale_tree(name, n, per_dir)) for name, n, per_dir in shapes]
    o = lambda n: os.path.join(out, n)  # noqa: E731
    writers = {
        "cpio": lambda t, n: IMGKIT + ["initramfs", t, "-o", o(n), "--compress", "none"],
        "fat": lambda t, n: HELPER + ["fat", t, o(n)],
        "iso": lambda t, n: HELPER + ["iso", t, o(n)],
        "ext4": lambda t, n: HELPER + ["ext4", t, o(n), str(ext4.ext4_size(trees.tree_stats(t)))],
    }
    secs = []
    for writer, argv in writers.items():
        s = Section(f"scale-{writer}", f"linear at scale: imgkit {writer}, time per file",
                    runs=1 if quick else None)
        for name, n, tree in made:
            trees.warm(tree)
            out_name = f"scale-{writer}-{name}"
            s.cmds.append(Command(f"{writer} {name} ({n:,} files)", argv(tree, out_name),
                                  (o(out_name),)))
        s.extra["files"] = {c.name: n for c, (_name, n, _t) in zip(s.cmds, made, strict=True)}
        s.after = _per_file
        secs.append(s)
    return secs


def _per_file(sec: Section) -> None:
    """Microseconds per file for each row, and the growth flags: the largest nested tree and
    the one-directory tree against the 10k tree."""
    files: dict[str, int] = sec.extra["files"]
    per = {name: r.seconds / files[name] * 1e6 for name, r in sec.results.items()
           if r.ok and r.seconds}
    sec.extra["us_per_file"] = per
    base = next((k for k in per if " 10k " in k), None)
    if base is None:
        return
    for name in per:
        if name != base and (files[name] > files[base] or "flat" in name):
            growth = per[name] / per[base]
            sec.extra.setdefault("growth", {})[name] = growth
            if growth > GROWTH_LIMIT:
                sec.notes.append(f"GROWS: {name} costs {growth:.1f}x per file what 10k does")


def _mksquashfs() -> tuple[str, str]:
    """The mksquashfs imgkit runs (squashfs-tools 4.6 where it can be had) and its version, so
    both rows use the same compressor and the ratio is imgkit's own cost."""
    path = subprocess.run(HELPER + ["mksquashfs"], capture_output=True, text=True,
                          check=True).stdout.strip()
    text = subprocess.run([path, "-version"], capture_output=True, text=True).stdout
    return path, (text.split()[2] if text.startswith("mksquashfs version") else "?")


def sec_squashfs(tree: str, out: str) -> list[Section]:
    s = Section("squashfs", "squashfs (gzip, 128 KiB blocks)")
    o = lambda n: os.path.join(out, n)  # noqa: E731
    s.cmds.append(Command("imgkit write_squashfs",
                          HELPER + ["squashfs", tree, o("imgkit.sqfs")], (o("imgkit.sqfs"),)))
    try:
        mksquashfs, version = _mksquashfs()
    except (OSError, subprocess.CalledProcessError) as exc:
        s.notes.append(f"no mksquashfs to compare with: {exc}")
        return [s]
    s.cmds.append(Command(f"mksquashfs {version} DIR", [
        mksquashfs, tree, o("mksquashfs.sqfs"), "-noappend", "-no-progress", "-quiet",
        "-comp", "gzip", "-b", "131072"], (o("mksquashfs.sqfs"),)))
    s.targets.append(Target("imgkit squashfs <= 1.2x mksquashfs on the directory",
                            s.cmds[0].name, s.cmds[-1].name, 1.2))
    return [s]


def sec_erofs(tree: str, out: str) -> list[Section]:
    s = Section("erofs", "erofs (uncompressed, 4 KiB blocks)")
    o = lambda n: os.path.join(out, n)  # noqa: E731
    s.cmds.append(Command("imgkit write_erofs", HELPER + ["erofs", tree, o("imgkit.erofs")],
                          (o("imgkit.erofs"),)))
    if not missing(s, "mkfs.erofs"):
        s.cmds.append(Command("mkfs.erofs DIR", ["mkfs.erofs", "--quiet", o("mkfs.erofs"), tree],
                              (o("mkfs.erofs"),)))
        s.targets.append(Target("imgkit erofs <= 1.2x mkfs.erofs on the directory",
                                s.cmds[0].name, s.cmds[-1].name, 1.2))
    return [s]


def _virt_available() -> bool:
    try:
        r = subprocess.run(IMGKIT + ["virt", "--help"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=60)
        return r.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _floor_kernel(s: Section) -> str | None:
    """The kernel virt boots (the uncompressed vmlinux, through PVH): a like-for-like floor."""
    try:
        from imgkit.vm.kernel import extract_vmlinux, fetch_debian_kernel
        return extract_vmlinux(fetch_debian_kernel().vmlinuz)
    except Exception as exc:  # noqa: BLE001 - any failure only drops the floor row
        s.notes.append(f"no kernel for the bare QEMU floor: {exc}")
        return None


def sec_virt(out: str) -> list[Section]:
    s = Section("virt", "virt start-up: imgkit virt -- true (TCG)")
    if not _virt_available():
        s.notes.append("virt: not available (imgkit virt --help failed)")
        return [s]
    if missing(s, "qemu-system-x86_64"):
        return [s]
    vmlinuz = None
    if not missing(s, "cpio", "gzip", "busybox"):
        vmlinuz = _floor_kernel(s)
    if vmlinuz:
        tiny = os.path.join(out, "tiny")
        os.makedirs(os.path.join(tiny, "bin"), exist_ok=True)
        shutil.copy(shutil.which("busybox") or "/bin/busybox", os.path.join(tiny, "bin", "busybox"))
        with open(os.path.join(tiny, "init"), "w") as f:
            f.write("#!/bin/busybox sh\n/bin/busybox poweroff -f\n")
        os.chmod(os.path.join(tiny, "init"), 0o755)
        initrd = os.path.join(out, "tiny.cpio.gz")
        subprocess.run(f"find . | cpio -o -H newc -R 0:0 --quiet | gzip -1 > {q(initrd)}",
                       shell=True, cwd=tiny, check=True)
        s.cmds.append(Command("bare qemu -kernel -initrd (floor)",
                              ["qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-nographic",
                               "-no-reboot", "-kernel", vmlinuz, "-initrd", initrd,
                               "-append", "console=ttyS0 panic=-1 quiet"], timeout=180))
    cache = os.path.join(out, "virt-cache")
    s.cmds.insert(0, Command("imgkit virt -- true (warm)", IMGKIT + ["virt", "--", "true"],
                             env={"IMGKIT_CACHE": cache}, timeout=300))
    s.extra["cold_cache"] = cache
    if vmlinuz:
        s.targets.append(Target("imgkit virt (warm) <= 1.1x bare QEMU floor", s.cmds[0].name,
                                "bare qemu -kernel -initrd (floor)", 1.1))
    s.targets.append(Target("imgkit virt cold <= 2x warm", "imgkit virt -- true (cold)",
                            s.cmds[0].name, 2.0))
    return [s]


# -- output -----------------------------------------------------------------------------------

def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def ratios(sec: Section) -> dict[str, float]:
    """The first row's (imgkit's) median time over each other row's, as the table prints."""
    me = sec.results.get(sec.cmds[0].name) if sec.cmds else None
    if me is None or not me.ok:
        return {}
    return {c.name: me.seconds / r.seconds  # type: ignore[operator]
            for c in sec.cmds[1:] if (r := sec.results.get(c.name)) and r.ok and r.seconds}


def print_section(sec: Section) -> None:
    print(f"\n== {sec.title} ==")
    for n in sec.notes:
        print(f"  note: {n}")
    if not sec.cmds:
        return
    me = sec.results.get(sec.cmds[0].name)
    width = max(len(c.name) for c in sec.cmds) + 2
    print(f"  {'tool':<{width}}{'median s':>10}{'peak RSS MB':>13}{'imgkit/this':>13}")
    for c in sec.cmds:
        r = sec.results.get(c.name)
        if r is None:
            continue
        if not r.ok:
            print(f"  {c.name:<{width}}FAILED: {r.error}")
            continue
        ratio = None
        if me is not None and me.ok and c is not sec.cmds[0] and r.seconds:
            ratio = me.seconds / r.seconds  # type: ignore[operator]
        print(f"  {c.name:<{width}}{fmt(r.seconds, '10.3f')}{fmt(r.rss_mb, '13.1f')}"
              f"{fmt(ratio, '13.2f') if ratio is not None else '            -'}")
    for t in sec.targets:
        if t.passed is None:
            verdict = "n/a (a row failed or is missing)"
        elif t.max_seconds is not None:
            verdict = f"{t.value * 1000:.1f} ms  {'PASS' if t.passed else 'MISS'}"
        elif t.ref is None:
            verdict = f"{t.value:.1f} MB  {'PASS' if t.passed else 'MISS'}"
        elif t.measure == "bytes":
            verdict = f"size ratio {t.value:.3f}  {'PASS' if t.passed else 'MISS'}"
        else:
            verdict = f"ratio {t.value:.2f}  {'PASS' if t.passed else 'MISS'}"
        print(f"  target: {t.text:<46} {verdict}")
    for key, value in sec.extra.items():
        if key == "output_bytes":
            print("  output sizes: "
                  + ", ".join(f"{k}: {v / 1e6:,.1f} MB" for k, v in value.items()))
        elif key == "us_per_file":
            growth = sec.extra.get("growth", {})
            for k, v in value.items():
                flag = ""
                if k in growth:
                    flag = (f"  x{growth[k]:.2f} of 10k's per-file time: "
                            f"{'GROWS' if growth[k] > GROWTH_LIMIT else 'linear'}")
                print(f"  {k}: {v:,.0f} µs per file{flag}")
        elif key == "disk_usage":
            for k, v in value.items():
                print(f"  {k} disk.img: apparent {v['apparent_bytes'] / MiB:,.0f} MiB, "
                      f"allocated {v['allocated_bytes'] / MiB:,.0f} MiB")


# -- main -------------------------------------------------------------------------------------

def run_section(sec: Section, runs: int, logdir: str) -> None:
    if not sec.cmds:
        return
    names = ", ".join(c.name for c in sec.cmds)
    trees.log(f"{sec.name}: {sec.runs or runs} run(s) of {names}")
    cold = None
    if "cold_cache" in sec.extra:
        # Cold: the first run with an empty cache, measured once, apart from the warm runs.
        cold = Command("imgkit virt -- true (cold)", sec.cmds[0].argv, env=sec.cmds[0].env,
                       timeout=900)
        shutil.rmtree(sec.extra.pop("cold_cache"), ignore_errors=True)
        sec.results.update(measure([cold], 1, logdir))
    keep = callable(sec.after)
    sec.results.update(measure(sec.cmds, sec.runs or runs, logdir, keep_outputs=keep))
    if keep:
        try:
            sec.after(sec)  # type: ignore[operator]
        finally:
            for c in sec.cmds:
                clear(c.outputs)
    if cold is not None:
        sec.cmds.insert(1, cold)
    for t in sec.targets:
        t.check(sec.results, sec.extra)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    # Every build measured is a whole build: the artifact cache would answer the second run
    # of each from the first (the rebuild section turns it back on for its own rows).
    os.environ["IMGKIT_CACHE_LIMIT"] = "0"
    ap.add_argument("--runs", type=int, default=3, help="runs per command; the median is kept")
    ap.add_argument("--only", action="append", default=[], metavar="SECTION",
                    help=f"only these sections ({', '.join(SECTIONS)}); repeatable or "
                         "comma-separated")
    ap.add_argument("--tree", metavar="DIR", help="benchmark this tree instead of building one")
    ap.add_argument("--quick", action="store_true",
                    help="a small tree (the host's Python library) for a fast smoke run")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--editable", action="store_true",
                    help="measure the checkout's editable install instead of a wheel of it")
    args = ap.parse_args(argv)
    args.quick = args.quick or os.environ.get("IMGKIT_BENCH_QUICK", "") not in ("", "0")
    only = {x for item in args.only for x in item.split(",") if x}
    unknown = only - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from "
                 f"{', '.join(SECTIONS)}")
    wanted = [s for s in SECTIONS if not only or s in only]
    if args.runs < 1:
        ap.error("--runs must be at least 1")

    if all(s in TREELESS for s in wanted):
        tree, how = "", "none: the sections chosen measure no tree"
    elif args.tree:
        tree, how = os.path.abspath(args.tree), "given with --tree"
        if not os.path.isdir(tree):
            ap.error(f"--tree {args.tree!r} is not a directory")
    elif args.quick:
        tree, how = trees.quick_tree(), "the host's Python standard library (--quick)"
    else:
        try:
            tree = trees.big_tree()
            how = open(tree + ".complete").read().strip()
        except Exception as exc:  # noqa: BLE001
            print(f"bench: cannot build the benchmark tree: {exc}", file=sys.stderr)
            return 1
    stats = trees.tree_stats(tree) if tree else None
    global IMGKIT, HELPER
    if not args.editable and any(s != "startup" for s in wanted):
        # As a user runs it: a wheel of this checkout, installed (the editable install's
        # import hook adds to every start-up, which the FAT row and the others include).
        try:
            script = startup.installed_imgkit()
            IMGKIT = [script]
            HELPER = [os.path.join(os.path.dirname(script), "python"), HELPER[1]]
            print(f"imgkit: {script} (a wheel of this checkout; --editable for the checkout)")
        except (RuntimeError, OSError, ValueError) as exc:
            print(f"imgkit: the editable checkout (no installed copy: {exc})")
    print(f"tree: {tree or '-'} ({how})")
    if stats is not None:
        print(f"      {stats.line()}")
    print(f"runs: {args.runs} per command, median; interleaved; warm page cache; "
          f"{os.cpu_count()} CPUs; Python {platform.python_version()}")

    base = trees.cache_dir()
    report: dict = {"tree": {"path": tree, "how": how, **(stats.as_dict() if stats else {})},
                    "runs": args.runs,
                    "cpus": os.cpu_count(), "sections": {}}
    with tempfile.TemporaryDirectory(prefix="run-", dir=base) as out:
        logdir = os.path.join(out, "logs")
        os.makedirs(logdir)
        if tree:
            trees.log("warming the page cache...")
            trees.warm(tree)
        for name in wanted:
            try:
                if name == "startup":
                    secs = sec_startup(out, args.runs)
                elif name == "initramfs":
                    secs = sec_initramfs(tree, out)
                elif name == "tar":
                    secs = sec_tar(tree, out)
                elif name == "fat":
                    if args.quick or args.tree:
                        fat_tree = trees.regular_subset(tree, os.path.join(out, "fat-tree"),
                                                        max_files=2000, max_bytes=40_000_000)
                    else:
                        fat_tree = trees.regular_subset(
                            tree, os.path.join(base, "tree-fat"), max_files=2000,
                            max_bytes=40_000_000, prefer=("usr/lib/python3.11", "usr/share"))
                    trees.warm(fat_tree)
                    secs = sec_fat(fat_tree, out)
                elif name == "iso":
                    secs = sec_iso(tree, out)
                elif name == "ext4":
                    secs = ext4.ext4_sections(tree, out, stats)
                elif name == "squashfs":
                    secs = sec_squashfs(tree, out)
                elif name == "erofs":
                    secs = sec_erofs(tree, out)
                elif name == "disk":
                    secs = ext4.disk_sections(tree, out, stats)
                elif name == "scale":
                    secs = sec_scale(out, args.quick)
                else:
                    secs = sec_virt(out)
            except Exception as exc:  # noqa: BLE001 - a broken section must not stop the rest
                why = f"could not set up: {type(exc).__name__}: {exc}"
                secs = [Section(name, name, notes=[why])]
            for sec in secs:
                try:
                    run_section(sec, args.runs, logdir)
                except Exception as exc:  # noqa: BLE001
                    sec.notes.append(f"failed while measuring: {type(exc).__name__}: {exc}")
                print_section(sec)
                sys.stdout.flush()
                report["sections"][sec.name] = {
                    "title": sec.title, "notes": sec.notes,
                    "results": [sec.results[c.name].as_dict() for c in sec.cmds
                                if c.name in sec.results],
                    "ratios": ratios(sec),
                    "targets": [t.as_dict() for t in sec.targets], **sec.extra}
    misses = [(n, t["target"]) for n, s in report["sections"].items() for t in s["targets"]
              if t["passed"] is False]
    print("\nsummary: " + ("every target met" if not misses else
                           f"{len(misses)} target(s) missed: " +
                           "; ".join(f"{n}: {t}" for n, t in misses)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
