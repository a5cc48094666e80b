"""Direct kernel boots in QEMU (TCG): Debian's kernel, our cpio writer in every compression,
the built-in busybox init, and an ext4 root on virtio-blk reached through kmod-resolved modules.

The kernel comes from :func:`imgkit.vm.kernel.fetch_debian_kernel`; CI sets ``IMGKIT_CACHE`` to
one shared, world-writable (mode 1777) directory so the root and unprivileged runs share the
download.
"""
from __future__ import annotations

import os
import re
import shutil

import pytest

from imgkit import tools
from imgkit.compress import compressed_writer
from imgkit.errors import BootError
from imgkit.formats.cpio import write_cpio
from imgkit.tree import Entry, FileBlob, Kind
from imgkit.vm import guest_init as initrd_init
from imgkit.vm import kernel, kmod, qemu

pytestmark = pytest.mark.boot

BOOT_TIMEOUT = 120  # TCG on a busy 2-core CI machine: typical boots take 3-10 s
APPEND = "console=ttyS0 panic=-1 quiet"


@pytest.fixture(scope="session")
def debian_kernel():
    return kernel.fetch_debian_kernel(os.environ.get("IMGKIT_CACHE"))


@pytest.fixture(scope="session")
def vmlinux(debian_kernel):
    """The ELF payload of the bzImage: QEMU boots it through PVH, about twice as fast."""
    return kernel.extract_vmlinux(debian_kernel.vmlinuz)


def _write_initrd(tree, path, method):
    with open(path, "wb") as f, compressed_writer(f, method) as w:
        write_cpio(tree, w)
    return str(path)


RC = r"""
echo IMGKIT-BEGIN
mount --bind / /mnt          # the initramfs itself, without devtmpfs over /dev
ls -ln /mnt/dev/console /mnt/dev/null /mnt/data/node
stat -c 'STAT %n %i %h %u:%g %a %F' /data/hello /data/hello2 /data/owned
echo "LINK $(readlink /data/link) $(cat /data/link)"
echo IMGKIT-END
"""


def _test_tree(tmp_path):
    """Init tree + data whose host files belong to whoever runs the test (root or not)."""
    tree = initrd_init.busybox_init_tree(rc_script=RC)
    host = tmp_path / "hello.txt"
    host.write_text("hello from the host\n")
    blob = FileBlob(str(host), host.stat().st_size)
    tree.add(Entry("data/hello", Kind.FILE, mode=0o644, data=blob))
    tree.add(Entry("data/hello2", Kind.HARDLINK, mode=0o644, target="data/hello"))
    tree.add(Entry("data/owned", Kind.FILE, mode=0o640, uid=1234, gid=5678, data=blob))
    tree.add(Entry("data/link", Kind.SYMLINK, mode=0o777, target="hello"))
    tree.add(Entry("data/node", Kind.CHAR, mode=0o620, uid=0, gid=5, rdev=(4, 64)))
    return tree


def _check_guest_view(log):
    body = log[log.index("IMGKIT-BEGIN"):log.index("IMGKIT-END")]
    assert re.search(r"^crw-------\s+1 0\s+0\s+5,\s+1 .*/mnt/dev/console$", body, re.M), body
    assert re.search(r"^crw-rw-rw-\s+1 0\s+0\s+1,\s+3 .*/mnt/dev/null$", body, re.M), body
    assert re.search(r"^crw--w----\s+1 0\s+5\s+4,\s+64 .*/mnt/data/node$", body, re.M), body
    stats = {m[0]: m[1:] for m in re.findall(
        r"^STAT /data/(\S+) (\d+) (\d+) (\S+) (\d+) (.+)$", body, re.M)}
    assert stats["hello"][0] == stats["hello2"][0], "hard links must share an inode"
    assert stats["hello"][1] == stats["hello2"][1] == "2"
    assert stats["hello"][2] == "0:0" and stats["hello"][3] == "644"
    assert stats["owned"][2:4] == ("1234:5678", "640")
    assert stats["hello"][4].strip() == "regular file"
    assert "LINK hello hello from the host" in body


# gzip boots the bzImage (the path bootloaders use); the others boot vmlinux through PVH.
@pytest.mark.parametrize("method,image", [("gzip", "bzimage"), ("xz", "vmlinux"),
                                          ("zstd", "vmlinux"), ("lz4", "vmlinux"),
                                          ("none", "vmlinux")])
def test_initramfs_boot(tmp_path, debian_kernel, vmlinux, method, image):
    initrd = _write_initrd(_test_tree(tmp_path), tmp_path / f"initrd.{method}", method)
    kern = debian_kernel.vmlinuz if image == "bzimage" else vmlinux
    spec = qemu.QemuSpec(kernel=kern, initrd=initrd, append=APPEND)
    result = qemu.boot(spec, expect="IMGKIT-END", timeout=BOOT_TIMEOUT)
    assert "Run /init" in result.log or "IMGKIT-BEGIN" in result.log
    _check_guest_view(result.log)


def test_init_runs_cmd_and_powers_off(tmp_path, vmlinux):
    """imgkit.cmd with a quoted value, then the init powers the VM off by itself."""
    initrd = _write_initrd(initrd_init.busybox_init_tree(), tmp_path / "i.zst", "zstd")
    spec = qemu.QemuSpec(kernel=vmlinux, initrd=initrd,
                         append=APPEND + ' imgkit.cmd="echo CMD-$((6*7)) ran"')
    result = qemu.boot(spec, expect=None, timeout=BOOT_TIMEOUT)
    assert result.returncode == 0 and "CMD-42 ran" in result.log


def _ext4_image(tmp_path):
    """An ext4 root made by plain mke2fs -d from a staging directory."""
    stage = tmp_path / "rootfs"
    for d in ("bin", "sbin", "dev", "proc", "sys", "tmp"):
        (stage / d).mkdir(parents=True)
    shutil.copy("/bin/busybox", stage / "bin" / "busybox")
    init = stage / "sbin" / "init"
    init.write_text("#!/bin/busybox sh\n"
                    "/bin/busybox echo EXT4-ROOT pid=$$\n"
                    "/bin/busybox grep ' / ' /proc/mounts | /bin/busybox sed 's/^/MOUNT /'\n"
                    "/bin/busybox poweroff -f\n")
    init.chmod(0o755)
    img = tmp_path / "root.ext4"
    tools.run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "imgroot", "-E", "root_owner=0:0",
               "-d", str(stage), str(img), "32M"])
    return str(img)


def test_ext4_root_on_virtio(tmp_path, debian_kernel, vmlinux):
    mods = kmod.resolve_modules(debian_kernel.moddir, ["virtio_pci", "virtio_blk", "ext4"])
    names = [m.name for m in mods]
    assert "crc32c_generic" in names and names.index("crc32c_generic") < names.index("ext4")
    tree = initrd_init.busybox_init_tree(modules=mods, moddir=debian_kernel.moddir)
    initrd = _write_initrd(tree, tmp_path / "initrd.zst", "zstd")
    spec = qemu.QemuSpec(kernel=vmlinux, initrd=initrd,
                         append=APPEND + " root=LABEL=imgroot rootfstype=ext4 rootwait",
                         drives=(qemu.Drive(_ext4_image(tmp_path), readonly=True),))
    result = qemu.boot(spec, expect=re.compile(r"MOUNT /dev/vda / ext4 ro\S*"),
                       timeout=BOOT_TIMEOUT)
    assert "EXT4-ROOT pid=1" in result.log  # switch_root exec'd our init as PID 1
    assert "Cannot load crc32c" not in result.log
    assert "warning: insmod" not in result.log, result.log


def test_missing_root_fails_fast(tmp_path, vmlinux):
    initrd = _write_initrd(initrd_init.busybox_init_tree(), tmp_path / "i.gz", "gzip")
    spec = qemu.QemuSpec(kernel=vmlinux, initrd=initrd,
                         append="console=ttyS0 quiet root=/dev/vdz rootdelay=1 panic=5")
    with pytest.raises(BootError) as info:
        qemu.boot(spec, expect="never printed", timeout=BOOT_TIMEOUT)
    msg = str(info.value)
    assert "imgkit-init: ERROR" in msg and "device /dev/vdz did not appear" in msg


@pytest.mark.parametrize("root", ["PARTUUID=6b1f7c9e-2d3a-4b5c-9d8e-0f1a2b3c4d5e",
                                  "PARTLABEL=imgkit-root"])
def test_ext4_partition_by_gpt_name(tmp_path, debian_kernel, vmlinux, root):
    """root=PARTUUID= / PARTLABEL= on a GPT disk partitioned by sgdisk: the init reads the
    partition entry itself (busybox has no blkid)."""
    fs = _ext4_image(tmp_path)
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(40 << 20)
    tools.run(["sgdisk", "-n", "1:2048:+32M", "-t", "1:8304", "-c", "1:imgkit-root",
               "-u", "1:6B1F7C9E-2D3A-4B5C-9D8E-0F1A2B3C4D5E", "-n", "2:0:0", str(disk)])
    with open(fs, "rb") as src, open(disk, "r+b") as dst:
        dst.seek(2048 * 512)
        shutil.copyfileobj(src, dst)
    mods = kmod.resolve_modules(debian_kernel.moddir, ["virtio_pci", "virtio_blk", "ext4"])
    tree = initrd_init.busybox_init_tree(modules=mods, moddir=debian_kernel.moddir)
    initrd = _write_initrd(tree, tmp_path / "initrd.zst", "zstd")
    spec = qemu.QemuSpec(kernel=vmlinux, initrd=initrd, append=APPEND + f" root={root}",
                         drives=(qemu.Drive(str(disk), readonly=True),))
    result = qemu.boot(spec, expect=re.compile(r"MOUNT /dev/vda1 / ext4 ro\S*"),
                       timeout=BOOT_TIMEOUT)
    assert "EXT4-ROOT pid=1" in result.log


PIPE_RC = r"""
stty -echo 2>/dev/null
echo IMGKIT-READING
while read -r line; do
    case "$line" in *typed-through-a-pipe*) echo "GOT <$line> ANSWER-$((6 * 7))"; break ;; esac
done
"""


def test_run_types_piped_stdin_into_the_serial_console(tmp_path, vmlinux):
    """``printf ... | imgkit run``: the guest's /dev/console (ttyS0) reads the pipe. The
    first bytes may go before the guest opens the port (the UART drops its FIFO then), so
    lines are sent until the guest echoes one."""
    import subprocess
    import sys
    initrd = _write_initrd(initrd_init.busybox_init_tree(rc_script=PIPE_RC),
                           tmp_path / "i.zst", "zstd")
    lines = b"".join(b"%d typed-through-a-pipe\n" % i for i in range(200))
    r = subprocess.run([sys.executable, "-m", "imgkit", "run", "--kernel", vmlinux,
                        "--initrd", initrd, "--append", APPEND, "--expect", "ANSWER-42",
                        "--timeout", str(BOOT_TIMEOUT)], input=lines, capture_output=True,
                       timeout=BOOT_TIMEOUT + 60)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, r.stderr.decode(errors="replace") + out
    assert re.search(r"GOT <\d+ typed-through-a-pipe> ANSWER-42", out), out[-2000:]
