"""A dm-verity root booted by the built-in init: a GPT disk with an ESP holding a UKI, an ext4
root and its hash partition; the UKI's command line carries ``roothash=${verity:root}``; the
init opens the root with veritysetup (copied with ``binaries``) and the dm_verity module.

Without a VM: the initramfs is listed by ``cpio``, the UKI's command line read by ``objcopy``,
the partitions checked by ``veritysetup verify``, the file's block found by ``debugfs``. The
boots (TCG, OVMF): the good image reaches its marker; with one byte of a file's data block
flipped after the build, the init stops with its verity error.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid

import pytest
from conftest import copy_partition, cpio_listing, sfdisk_partitions, sh

VERITYSETUP = shutil.which("veritysetup", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
BOOT_TIMEOUT = "240"
MARKER = "VERITY-ROOT-MARKER"

CONFIG = """
seed = "verity-boot"
mtime = 1700000000

[trees.initrd]
init = "busybox"
modules = ["virtio_pci", "virtio_blk"]
binaries = ["veritysetup"]

[trees.initrd.init_config]
root = "PARTLABEL=root"
verity = "PARTLABEL=root-verity"
fstype = "ext4"
command = ["/bin/busybox", "sh", "/check"]

[initramfs.main]
tree = "initrd"
output = "initrd.zst"

[uki.main]
initrd = ["initramfs:main"]
cmdline = "console=ttyS0 panic=-1 roothash=${verity:root}"
output = "main.efi"

[trees.esp]
files = { "/EFI/BOOT/BOOTX64.EFI" = "uki:main" }

[filesystems.esp]
type = "vfat"
tree = "esp"
fat_type = 32
size = "40M"
label = "ESP"

[trees.root]
files = { "/bin/busybox" = "/bin/busybox", "/etc/marker" = "marker.txt", "/check" = "check.sh" }
entries = ["dir /proc 0555 0 0", "dir /sys 0555 0 0", "dir /dev 0755 0 0"]
owner = "squash"

[filesystems.root]
type = "ext4"
tree = "root"

[disk]
output = "disk.img"
partitions = [
  { name = "esp", type = "esp", size = "auto", filesystem = "esp" },
  { name = "root", type = "root-x86-64", filesystem = "root" },
  { name = "root-verity", type = "root-x86-64-verity", verity = "root" },
]
"""


def imgkit(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "imgkit", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"imgkit {' '.join(args)} failed:\n{r.stderr}\n{r.stdout[-3000:]}")
    return r


CHECK = r"""#!/bin/busybox sh
/bin/busybox grep ' / ' /proc/mounts | /bin/busybox sed 's/^/MOUNT /'
/bin/busybox echo "VERITY-ROOT-$(/bin/busybox head -n 1 /etc/marker)"
/bin/busybox poweroff -f
"""


def build(tmp_path, out: str = "out", fstype: str = "ext4"):
    (tmp_path / "check.sh").write_text(CHECK)
    (tmp_path / "marker.txt").write_text("MARKER\n" + "x" * 8000 + "\n")
    (tmp_path / "c.toml").write_text(CONFIG.replace('"ext4"', f'"{fstype}"'))
    imgkit("build", str(tmp_path / "c.toml"), "-O", str(tmp_path / out), "-q")
    return tmp_path / out


def parts(image: str) -> dict[str, dict]:
    return {p["name"]: p for p in sfdisk_partitions(image)}


def root_hash(image: str) -> str:
    p = parts(image)
    return (uuid.UUID(p["root"]["uuid"]).bytes + uuid.UUID(p["root-verity"]["uuid"]).bytes).hex()


def verify(tmp_path, image: str) -> subprocess.CompletedProcess:
    p = parts(image)
    copy_partition(image, p["root"], tmp_path / "data.part")
    copy_partition(image, p["root-verity"], tmp_path / "hash.part")
    assert VERITYSETUP
    return subprocess.run([VERITYSETUP, "verify", str(tmp_path / "data.part"),
                           str(tmp_path / "hash.part"), root_hash(image)],
                          capture_output=True, text=True)


def corrupt_marker(tmp_path, image: str) -> None:
    """Flip one byte inside the data block of /etc/marker, found by debugfs."""
    p = parts(image)["root"]
    copy_partition(image, p, tmp_path / "root.ext4")
    block = int(sh("debugfs", "-R", "bmap /etc/marker 0", str(tmp_path / "root.ext4")).split()[-1])
    size = int(sh("debugfs", "-R", "stats", str(tmp_path / "root.ext4")).split("Block size:")[1]
               .split()[0])
    offset = p["start"] * 512 + block * size + 3
    with open(image, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x20]))


def test_verity_image_initramfs_cmdline_and_corruption(tmp_path):
    out = build(tmp_path)
    image = str(out / "disk.img")
    listing = cpio_listing(sh("sh", "-c", f"zstd -dc {out}/initrd.zst > {tmp_path}/i.cpio && "
                                          f"echo {tmp_path}/i.cpio").strip())
    assert "usr/sbin/veritysetup" in listing and "lib/x86_64-linux-gnu/libcryptsetup.so.12" in listing
    assert any(p.endswith("dm-verity.ko") for p in listing), sorted(listing)
    conf = sh("sh", "-c", f"cd {tmp_path} && cpio -i --to-stdout etc/imgkit/init.conf < i.cpio")
    assert "verity=PARTLABEL=root-verity" in conf and "verity_check=1" in conf
    cmdline = sh("objcopy", "-O", "binary", "--only-section=.cmdline", str(out / "main.efi"),
                 "/dev/stdout").rstrip("\0")
    assert cmdline == f"console=ttyS0 panic=-1 roothash={root_hash(image)}"
    good = verify(tmp_path, image)
    assert good.returncode == 0, good.stderr
    corrupt_marker(tmp_path, image)
    bad = verify(tmp_path, image)
    assert bad.returncode != 0 and "Verification failed" in bad.stderr, bad.stderr
    # the same config builds the same bytes
    assert (build(tmp_path, "a") / "disk.img").read_bytes() == \
        (build(tmp_path, "b") / "disk.img").read_bytes()


@pytest.mark.parametrize("body, message", [
    ('root = "PARTLABEL=root"\nverity = "PARTLABEL=v"', "needs veritysetup in the initramfs"),
    ('root = "LABEL=x"\nfile = "/r.sq"\nverity = "PARTLABEL=v"', "expected root to be a device"),
    ('root = "PARTLABEL=root"\nverity = "/hash"', "verity: expected a device"),
    ('root = "PARTLABEL=root"\nroothash = "ab"', "roothash: it goes with verity"),
    ('root = "PARTLABEL=r"\nverity = "PARTLABEL=v"\nroothash = "xyz"', "expected hexadecimal"),
])
def test_verity_config_errors(tmp_path, body, message):
    (tmp_path / "c.toml").write_text(f"[trees.i]\ninit = 'busybox'\n[trees.i.init_config]\n{body}\n"
                                     "[initramfs.i]\ntree = 'i'\noutput = 'i.cpio'\n")
    r = imgkit("build", str(tmp_path / "c.toml"), "-O", str(tmp_path / "out"), "-q", check=False)
    assert r.returncode == 1 and message in r.stderr, r.stderr


def boot(out, expect: str) -> subprocess.CompletedProcess:
    return imgkit("run", str(out / "disk.img"), "--firmware", "uefi", "--snapshot", "--expect",
                  expect, "--timeout", BOOT_TIMEOUT, check=False)


@pytest.mark.boot
def test_boot_verity_root(tmp_path):
    out = build(tmp_path)
    r = boot(out, MARKER)
    assert r.returncode == 0, f"boot failed:\n{r.stderr[-4000:]}\n{r.stdout[-4000:]}"
    log = r.stdout
    assert "verity: every block of PARTLABEL=root matches root hash" in log, log[-3000:]
    assert "MOUNT /dev/mapper/root / ext4 ro" in log, log[-3000:]


@pytest.mark.boot
@pytest.mark.parametrize("fstype", ["erofs", "squashfs"])
def test_boot_verity_read_only_root(tmp_path, fstype):
    """The same verity root as a read-only filesystem: erofs, squashfs (the hash tree covers
    the partition whatever is in it)."""
    out = build(tmp_path, fstype=fstype)
    good = verify(tmp_path, str(out / "disk.img"))
    assert good.returncode == 0, good.stderr
    r = boot(out, MARKER)
    assert r.returncode == 0, f"boot failed:\n{r.stderr[-4000:]}\n{r.stdout[-4000:]}"
    assert "verity: every block of PARTLABEL=root matches root hash" in r.stdout, r.stdout[-3000:]
    assert f"MOUNT /dev/mapper/root / {fstype} ro" in r.stdout, r.stdout[-3000:]


@pytest.mark.boot
def test_boot_verity_root_corrupted_fails_loudly(tmp_path):
    """The runner stops at the init's ERROR line and fails the run with it."""
    out = build(tmp_path)
    corrupt_marker(tmp_path, str(out / "disk.img"))
    r = boot(out, MARKER)
    log = r.stdout + r.stderr
    assert r.returncode != 0 and "the guest reported a failure ('imgkit-init: ERROR')" in r.stderr, \
        log[-3000:]
    line = log[log.index("imgkit-init: ERROR: verity:"):].splitlines()[0]
    assert "does not match its hash tree" in line and "Input/output error" in line, line
    assert "data block" in log and "is corrupted" in log   # the kernel's dm-verity report
    assert MARKER not in log.replace(f"waiting for '{MARKER}'", "")


def test_verity_adds_the_dm_verity_module():
    from imgkit.vm.guest_init import InitConfig, init_config_modules
    assert init_config_modules(InitConfig(root="PARTLABEL=r", verity="PARTLABEL=v",
                                          fstype="erofs")) == ("dm_verity", "erofs")
