"""The built-in init's declarative config (``[trees.NAME.init_config]``) and live roots.

Without a VM: the rendered ``/etc/imgkit/init.conf`` is sourced by busybox ``sh`` (the shell
that reads it in the guest) and the built initramfs is listed by ``cpio``. The boots (TCG,
Debian's kernel, direct) mount a squashfs partition as the root, stack a squashfs partition,
an ext4 partition and a tmpfs with overlayfs under a hook, and boot a live ISO whose root is a
squashfs file on the medium with an overlay on tmpfs, under SeaBIOS and OVMF, as a CD and as a
USB disk.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import copy_partition, cpio_listing, sfdisk_partitions, sh

from imgkit.errors import InputError
from imgkit.vm.guest_init import InitConfig, init_config_modules, render_init_conf

BOOT_TIMEOUT = "90"


def imgkit(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The CLI; times come from each config's ``mtime`` (mksquashfs refuses its own
    time options alongside ``SOURCE_DATE_EPOCH``)."""
    r = subprocess.run([sys.executable, "-m", "imgkit", *args], capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"})
    if check and r.returncode != 0:
        raise AssertionError(f"imgkit {' '.join(args)} failed:\n{r.stderr}\n{r.stdout[-3000:]}")
    return r


def source_conf(conf: str, tmp_path, script: str) -> str:
    """Run ``script`` in busybox sh after sourcing ``conf`` as the init does."""
    path = tmp_path / "init.conf"
    path.write_text(conf)
    prelude = 'run_hook() { stage=$1; shift; printf "%s:" "$stage"; printf " <%s>" "$@"; echo; }\n'
    return sh("busybox", "sh", "-c", prelude + f". {path}\n" + script)


def test_init_conf_is_read_by_busybox_sh_without_expanding_anything(tmp_path):
    tricky = "echo \"it's $HOME\" `id` > /newroot/x; *"
    cfg = InitConfig(root="PARTLABEL=sq", lowers=("PARTLABEL=ext", "/extra"), upper="tmpfs",
                     after_root=(("sh", "-c", tricky), ("touch", "/a b")),
                     command=("/bin/busybox", "sh", "-c", "cat '/x'"), initctl=True)
    out = source_conf(render_init_conf(cfg), tmp_path,
                      'echo "root=$root lowers=$lowers upper=$upper mode=$mode initctl=$initctl"\n'
                      'hook_before_root; hook_after_root\n'
                      'eval "set -- $command"; printf "[%s]" "$@"; echo\n')
    lines = out.splitlines()
    assert lines[0] == "root=PARTLABEL=sq lowers=PARTLABEL=ext,/extra upper=tmpfs mode=ro initctl=1"
    assert lines[1] == f"after_root: <sh> <-c> <{tricky}>"
    assert lines[2] == "after_root: <touch> </a b>"
    assert lines[3] == "[/bin/busybox][sh][-c][cat '/x']"


def test_modules_follow_the_layers():
    assert init_config_modules(InitConfig(root="/dev/vda")) == ()
    assert init_config_modules(InitConfig(root="LABEL=L", file="/live/r.sq", upper="tmpfs",
                                          fstype="squashfs")) == ("loop", "squashfs", "overlay")
    assert init_config_modules(InitConfig(root="/dev/sr0", fstype="iso9660")) == ("isofs",)


@pytest.mark.parametrize("cfg,message", [
    (InitConfig(file="/live/root.squashfs"), "file needs root"),
    (InitConfig(), "nothing to mount"),
    (InitConfig(root="LABEL=a,b"), "told apart"),
    (InitConfig(root="LABEL=x", file="live/r"), "absolute path"),
])
def test_bad_init_configs(cfg, message):
    with pytest.raises(InputError, match=message):
        render_init_conf(cfg)


@pytest.mark.parametrize("body,message", [
    ("before_root = [\"echo hi\"]", r"init_config.before_root: expected a list of argv lists"),
    ("switch = \"pivot\"", r"init_config.switch: expected one of switch_root, chroot"),
    ("rooot = \"/dev/vda\"", r"unknown key 'rooot' in \[trees.i.init_config\]"),
])
def test_config_errors_name_the_key(tmp_path, body, message):
    import re
    (tmp_path / "c.toml").write_text(
        f"[trees.i]\ninit = 'busybox'\n[trees.i.init_config]\n{body}\n"
        "[initramfs.i]\ntree = 'i'\noutput = 'i.cpio'\n")
    r = imgkit("build", str(tmp_path / "c.toml"), "-O", str(tmp_path / "out"), "-q", check=False)
    assert r.returncode == 1 and re.search(message, r.stderr), r.stderr


def test_init_config_needs_the_busybox_init(tmp_path):
    (tmp_path / "c.toml").write_text("[trees.i.init_config]\nroot = '/dev/vda'\n"
                                     "[initramfs.i]\ntree = 'i'\noutput = 'i.cpio'\n")
    r = imgkit("build", str(tmp_path / "c.toml"), "-O", str(tmp_path / "out"), "-q", check=False)
    assert r.returncode == 1 and "need init = 'busybox'" in r.stderr, r.stderr


# -- images: an initramfs whose init stacks layers, and roots on partitions --------------------

CHECK = r"""#!/bin/busybox sh
hooked=$(/bin/busybox cat /hooked 2>/dev/null || /bin/busybox cat /dev/hooked-note)
/bin/busybox echo "LIVE-ROOT $(/bin/busybox cat /etc/layer) $hooked"
/bin/busybox grep -E ' / ' /proc/mounts | /bin/busybox sed 's/^/MOUNT /'
/bin/busybox echo LIVE-DONE
if [ -p /dev/initctl ]; then /bin/busybox echo off > /dev/initctl; /bin/busybox sleep 60; fi
/bin/busybox poweroff -f
"""


def write_roots(tmp_path) -> None:
    """The squashfs layer (busybox, /etc/layer = squashfs) and the ext4 one (a later
    /etc/layer and the final command)."""
    (tmp_path / "check.sh").write_text(CHECK)
    (tmp_path / "sq-layer").write_text("squashfs\n")
    (tmp_path / "ext-layer").write_text("ext4-over-squashfs\n")


#: The two lower layers of the live tests: the squashfs root (busybox, /etc/layer = squashfs,
#: the check script) and an ext4 layer with a later /etc/layer.
LIVE_LAYERS = """
[trees.sq]
files = { "/bin/busybox" = "/bin/busybox", "/etc/layer" = "sq-layer", "/check" = "check.sh" }
entries = ["dir /proc 0555 0 0", "dir /sys 0555 0 0", "dir /dev 0755 0 0", "dir /tmp 01777 0 0"]
owner = "squash"

[trees.ext]
files = { "/etc/layer" = "ext-layer" }
owner = "squash"
"""

STACK = """
seed = "{seed}"
mtime = 1700000000

[trees.initrd]
init = "busybox"
modules = ["virtio_pci", "virtio_blk", "ext4"]

[trees.initrd.init_config]
{init_config}

[initramfs.main]
tree = "initrd"
output = "initrd.zst"
{layers}
[filesystems.sq]
type = "squashfs"
tree = "sq"

[filesystems.ext]
type = "ext4"
tree = "ext"
label = "layer2"
{extra}
[disk]
output = "disk.img"
partitions = [
  {{ name = "sq", size = "auto", filesystem = "sq" }},
  {{ name = "ext", size = "auto", filesystem = "ext" }},
{extra_partitions}]
"""


def stack_config(init_config: str, *, layers: str = LIVE_LAYERS, seed: str = "live-test",
                 extra: str = "", extra_partitions: str = "") -> str:
    """A disk of a squashfs partition ``sq`` and an ext4 one ``ext`` (the trees of the same
    names, from *layers*), with more filesystems and partitions if given, and an initramfs
    whose init config is *init_config*."""
    return STACK.format(init_config=init_config, layers=layers, seed=seed, extra=extra,
                        extra_partitions=extra_partitions)


OVERLAY_CONFIG = """root = "PARTLABEL=sq"
fstype = "squashfs"
lowers = ["PARTLABEL=ext"]
upper = "tmpfs"
after_root = [["sh", "-c", "echo hook-wrote-this > /newroot/hooked"]]
command = ["/bin/busybox", "sh", "/check"]"""

SQUASHFS_CONFIG = """root = "PARTLABEL=sq"
fstype = "squashfs"
initctl = true
before_exec = [["sh", "-c", "echo from-initramfs > /newroot/dev/hooked-note"]]
command = ["/bin/busybox", "sh", "-c", "echo hook > /tmp/x; exec /bin/busybox sh /check"]"""


def build_stack(tmp_path, init_config: str):
    write_roots(tmp_path)
    (tmp_path / "c.toml").write_text(stack_config(init_config))
    out = tmp_path / "out"
    imgkit("build", str(tmp_path / "c.toml"), "-O", str(out), "-q")
    return out


def test_overlay_stack_image_and_initramfs(tmp_path):
    out = build_stack(tmp_path, OVERLAY_CONFIG)
    listing = cpio_listing(sh("sh", "-c", f"zstd -dc {out}/initrd.zst > {tmp_path}/i.cpio && "
                                          f"echo {tmp_path}/i.cpio").strip())
    assert "etc/imgkit/init.conf" in listing
    names = {os.path.basename(p) for p in listing}
    assert {"overlay.ko", "virtio_blk.ko", "ext4.ko"} <= {n.split(".ko")[0] + ".ko" for n in names
                                                         if ".ko" in n}
    conf = sh("sh", "-c", f"cd {tmp_path} && cpio -i --to-stdout etc/imgkit/init.conf < i.cpio")
    assert "root=PARTLABEL=sq" in conf and "lowers=PARTLABEL=ext" in conf
    dump = sh("sfdisk", "--json", str(out / "disk.img"))
    assert '"name":"sq"' in dump.replace(" ", "") and '"name":"ext"' in dump.replace(" ", "")


def debian_kernel():
    from imgkit.vm import kernel
    return kernel.fetch_debian_kernel(os.environ.get("IMGKIT_CACHE"))


def boot_direct(out, expect: str, *, append: str = "", snapshot: bool = True) -> str:
    """Boot Debian's kernel with the built initramfs and disk (``append`` added to the command
    line; without ``snapshot`` the guest's writes reach the disk image); the console log."""
    r = imgkit("run", "--kernel", debian_kernel().vmlinuz, "--initrd", str(out / "initrd.zst"),
               "--append", f"console=ttyS0 panic=-1 {append}".strip(), "--drive",
               str(out / "disk.img"), *(["--snapshot"] if snapshot else []), "--expect", expect,
               "--timeout", BOOT_TIMEOUT, check=False)
    assert r.returncode == 0, f"boot failed:\n{r.stderr[-4000:]}\n{r.stdout[-4000:]}"
    return r.stdout


@pytest.mark.boot
def test_boot_squashfs_partition_root(tmp_path):
    out = build_stack(tmp_path, SQUASHFS_CONFIG)
    log = boot_direct(out, "/dev/initctl written: powering off")
    assert "LIVE-ROOT squashfs from-initramfs" in log, log[-3000:]
    assert "squashfs" in log[log.index("LIVE-ROOT"):]


@pytest.mark.boot
def test_boot_three_layer_overlay_with_hook(tmp_path):
    out = build_stack(tmp_path, OVERLAY_CONFIG)
    log = boot_direct(out, "LIVE-DONE")
    assert "LIVE-ROOT ext4-over-squashfs hook-wrote-this" in log, log[-3000:]
    assert "MOUNT overlay / overlay" in log, log[-3000:]


OVERRIDDEN_CONFIG = """root = "PARTLABEL=sq"
fstype = "squashfs"
lowers = ["PARTLABEL=ext"]
upper = "tmpfs"
command = ["/bin/busybox", "sh", "/check"]"""


@pytest.mark.boot
def test_kernel_command_line_overrides_the_init_config(tmp_path):
    """init.conf says: an overlay of the squashfs and the ext4 layer; ``imgkit.lowers=`` and
    ``imgkit.upper=`` on the command line make it the squashfs alone, and ``imgkit.init=``
    another final command."""
    write_roots(tmp_path)
    os.chmod(tmp_path / "check.sh", 0o755)   # run as the final command itself
    out = build_stack(tmp_path, OVERRIDDEN_CONFIG)
    log = boot_direct(out, "LIVE-DONE",
                      append="imgkit.lowers= imgkit.upper= imgkit.init=/check")
    assert "LIVE-ROOT squashfs" in log, log[-3000:]
    assert "mounted an overlay" not in log and "MOUNT overlay" not in log
    assert " / squashfs " in log[log.index("LIVE-ROOT"):], log[-3000:]


UPPER_PARTITION = """
[trees.up]
entries = ["dir /lost+found 0700 0 0"]

[filesystems.up]
type = "ext4"
tree = "up"
size = "16M"
"""

UPPER_CONFIG = """root = "PARTLABEL=sq"
fstype = "squashfs"
lowers = ["PARTLABEL=ext"]
upper = "PARTLABEL=up"
command = ["/bin/busybox", "sh", "-c",
           "echo written-in-guest > /etc/written && /bin/busybox sync && exec /bin/busybox sh /check"]"""


@pytest.mark.boot
def test_boot_overlay_with_a_writable_partition_upper(tmp_path):
    """The upper layer a partition: what the guest writes lands in its ``upper/`` (with the
    overlay's ``work/`` beside it), read back by debugfs; the lower partitions are unchanged."""
    write_roots(tmp_path)
    (tmp_path / "c.toml").write_text(stack_config(
        UPPER_CONFIG, extra=UPPER_PARTITION,
        extra_partitions='  { name = "up", size = "16M", filesystem = "up" },\n'))
    out = tmp_path / "out"
    imgkit("build", str(tmp_path / "c.toml"), "-O", str(out), "-q")
    image = str(out / "disk.img")
    parts = {p["name"]: p for p in sfdisk_partitions(image)}

    def partition_bytes(name: str) -> bytes:
        with open(image, "rb") as f:
            f.seek(parts[name]["start"] * 512)
            return f.read(parts[name]["size"] * 512)
    lower_before = {n: partition_bytes(n) for n in ("sq", "ext")}
    log = boot_direct(out, "LIVE-DONE", snapshot=False)
    assert "LIVE-ROOT ext4-over-squashfs" in log, log[-3000:]
    assert "under PARTLABEL=up" in log, log[-3000:]
    copy_partition(image, parts["up"], tmp_path / "up.ext4")
    upper = str(tmp_path / "up.ext4")
    assert sh("debugfs", "-R", "cat /upper/etc/written", upper).strip() == "written-in-guest"
    assert "work" in sh("debugfs", "-R", "ls /", upper)
    assert {n: partition_bytes(n) for n in ("sq", "ext")} == lower_before


# -- the live ISO example -----------------------------------------------------------------------

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "live-iso.toml")


def test_live_iso_holds_the_squashfs_and_the_boot_files(tmp_path):
    out = tmp_path / "out"
    imgkit("build", EXAMPLE, "-O", str(out), "-q")
    iso = str(out / "live.iso")
    files = sh("xorriso", "-indev", iso, "-find", "/", "-type", "f")
    for name in ("/live/root.squashfs", "isolinux"):
        assert name in files, files
    sh("sh", "-c", f"cd {tmp_path} && bsdtar -xf {iso} live/root.squashfs")
    listing = sh("unsquashfs", "-lln", str(tmp_path / "live" / "root.squashfs"))
    assert "-rwxr-xr-x 0/0" in listing and "squashfs-root/sbin/init" in listing, listing


def test_live_iso_is_reproducible(tmp_path):
    digests = []
    for run in ("a", "b"):
        imgkit("build", EXAMPLE, "-O", str(tmp_path / run), "-q")
        digests.append(sh("sha256sum", str(tmp_path / run / "live.iso")).split()[0])
    assert digests[0] == digests[1]


def sha256(path) -> str:
    return sh("sha256sum", str(path)).split()[0]


@pytest.mark.boot
@pytest.mark.parametrize("firmware,media", [("bios", "cdrom"), ("bios", "disk"),
                                            ("uefi", "cdrom"), ("uefi", "disk")])
def test_boot_live_iso(tmp_path, firmware, media):
    """BIOS (ISOLINUX) and UEFI (the UKI in the El Torito EFI image), each as a CD and as a
    USB disk (the isohybrid MBR / GPT). No ``--snapshot``: the disk is attached writable, and
    the ISO file must come back unchanged, the guest's write having gone to the tmpfs upper."""
    out = tmp_path / "out"
    imgkit("build", EXAMPLE, "-O", str(out), "-q")
    iso = out / "live.iso"
    before = sha256(iso)
    extra = ["--iso-as-disk"] if media == "disk" else []
    # the whole line, so that what the assertions read was printed before the run stopped
    r = imgkit("run", str(iso), "--firmware", firmware, *extra, "--expect",
               "imgkit live: overlay root is writable (overlay)", "--timeout", "240", check=False)
    assert r.returncode == 0, f"boot failed:\n{r.stderr[-4000:]}\n{r.stdout[-4000:]}"
    mount = [line for line in r.stdout.splitlines() if "imgkit live: root mount:" in line]
    assert mount and " / overlay " in mount[0] and "upperdir=/run/imgkit/upper/upper" in mount[0], \
        r.stdout[-3000:]
    assert "imgkit live: overlay root is writable (overlay)" in r.stdout
    assert sha256(iso) == before, "the guest changed the ISO"
