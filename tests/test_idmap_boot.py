"""Id-mapped layers, booted (TCG, Debian's kernel 6.1, direct).

The root is an overlay of a plain squashfs partition (busybox, the check script, a file owned
by 1000:1000 on it) under an ext4 partition whose files are owned by 1000:1000 (one by 1001),
id-mapped with ``u:1000:0:1 g:1000:0:1``, under a tmpfs upper. The guest must see the ext4
files as root's, the one outside the map as the overflow id 65534, the squashfs files as they
are on disk; the ext4 files are still 1000 on the unmapped mount, and a file written or
copied up through the overlay lands in the upper as 0:0. A squashfs layer given a map (the
kernel does not id-map squashfs) fails the boot with the init's ERROR line and EINVAL.
"""
from __future__ import annotations

import pytest
from test_live import BOOT_TIMEOUT, boot_direct, debian_kernel, imgkit, stack_config

CHECK = r"""#!/bin/busybox sh
for f in /etc/layer /mapped/file /mapped/other /plain-user /check /written; do
    /bin/busybox echo "OWNER $f $(/bin/busybox stat -c %u:%g $f)"
done
/bin/busybox echo IDMAP-DONE
/bin/busybox poweroff -f
"""

#: Runs in the initramfs once the overlay is on /newroot: writes through it, then shows the
#: upper's copy and the unmapped ext4 mount (/run/imgkit/raw/1).
AFTER_ROOT = r"""
echo new > /newroot/written
echo more >> /newroot/mapped/file
for f in written mapped/file; do
    echo "UPPER $f $(stat -c %u:%g /run/imgkit/upper/upper/$f)"
done
echo "RAW mapped/file $(stat -c %u:%g /run/imgkit/raw/1/mapped/file)"
"""

INIT_CONFIG = """root = "PARTLABEL=sq"
fstype = "squashfs"
lowers = ["PARTLABEL=ext"]
upper = "tmpfs"
command = ["/bin/busybox", "sh", "/check"]
after_root = [{{ shell = '''{after_root}''' }}]
{idmaps}"""

#: The squashfs layer has a file of 1000:1000 left unmapped; the ext4 layer's files are all
#: 1000's but one of 1001.
LAYERS = """
[trees.sq]
files = {{ "/bin/busybox" = "/bin/busybox", "/check" = "check.sh" }}
entries = ["dir /proc 0555 0 0", "dir /sys 0555 0 0", "dir /dev 0755 0 0", "dir /tmp 01777 0 0",
           "file /plain-user {dir}/check.sh 0644 1000 1000"]

[trees.ext]
entries = ["dir /etc 0755 1000 1000", "file /etc/layer {dir}/ext-layer 0644 1000 1000",
           "dir /mapped 0755 1000 1000", "file /mapped/file {dir}/ext-layer 0644 1000 1000",
           "file /mapped/other {dir}/ext-layer 0644 1001 1001"]
"""


def build(tmp_path, idmaps: str):
    (tmp_path / "check.sh").write_text(CHECK)
    (tmp_path / "ext-layer").write_text("ext4\n")
    (tmp_path / "c.toml").write_text(stack_config(
        INIT_CONFIG.format(after_root=AFTER_ROOT, idmaps=idmaps),
        layers=LAYERS.format(dir=tmp_path), seed="idmap-test"))
    out = tmp_path / "out"
    imgkit("build", str(tmp_path / "c.toml"), "-O", str(out), "-q")
    return out


def owners(log: str, tag: str) -> dict[str, str]:
    found = {}
    for line in log.splitlines():
        words = line.split()
        if len(words) >= 3 and tag in words:
            i = words.index(tag)
            found[words[i + 1]] = words[i + 2]
    return found


@pytest.mark.boot
def test_boot_overlay_with_an_id_mapped_ext4_layer(tmp_path):
    out = build(tmp_path, 'idmaps = { "PARTLABEL=ext" = "u:1000:0:1 g:1000:0:1" }')
    log = boot_direct(out, "IDMAP-DONE")
    assert "id-mapped layer PARTLABEL=ext (ext4, u:1000:0:1 g:1000:0:1)" in log, log[-3000:]
    assert owners(log, "OWNER") == {
        "/etc/layer": "0:0", "/mapped/file": "0:0",        # 1000 on disk, mapped to root
        "/mapped/other": "65534:65534",                   # 1001: outside the map
        "/plain-user": "1000:1000", "/check": "0:0",      # the plain squashfs layer
        "/written": "0:0"}, log[-3000:]
    assert owners(log, "UPPER") == {"written": "0:0", "mapped/file": "0:0"}, log[-3000:]
    assert owners(log, "RAW") == {"mapped/file": "1000:1000"}, log[-3000:]
    assert "ERROR" not in log, log[-3000:]


@pytest.mark.boot
def test_boot_fails_loudly_when_a_squashfs_layer_is_id_mapped(tmp_path):
    """The runner stops at the init's ERROR line and fails the run with it."""
    out = build(tmp_path, 'idmaps = { "PARTLABEL=sq" = "b:0:1000:1" }')
    r = imgkit("run", "--kernel", debian_kernel().vmlinuz, "--initrd", str(out / "initrd.zst"),
               "--append", "console=ttyS0 panic=-1", "--drive", str(out / "disk.img"),
               "--snapshot", "--expect", "IDMAP-DONE", "--timeout", BOOT_TIMEOUT, check=False)
    log = r.stdout + r.stderr
    assert r.returncode != 0 and "the guest reported a failure ('imgkit-init: ERROR')" in r.stderr, \
        log[-3000:]
    line = log[log.index("imgkit-init: ERROR:"):].splitlines()[0]
    assert "layer PARTLABEL=sq (squashfs) cannot be id-mapped with 'u:0:1000:1 g:0:1000:1'" \
        in line, line
    assert "mount_setattr(MOUNT_ATTR_IDMAP)" in line and "(EINVAL)" in line, line
    assert "OWNER" not in log
