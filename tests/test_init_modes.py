"""The built-in init's hooks written as shell scripts, its switch_root / pivot_root / chroot
modes, and an id map in /proc/PID/uid_map's spelling (refused: the init takes X-mount.idmap's;
id-mapped layers are tested in test_idmap.py and test_idmap_boot.py).

Without a VM: the rendered ``/etc/imgkit/init.conf`` is sourced by busybox ``sh``, the shell
that reads it in the guest, and its here-documents must hand every script over verbatim. The
boots (TCG, Debian's kernel, direct) enter a three-layer overlay root with pivot_root after a
shell hook wrote into it, and a squashfs root with chroot.
"""
from __future__ import annotations

import pytest
from test_live import boot_direct, build_stack, imgkit, source_conf

from imgkit.vm.guest_init import InitConfig, ShellHook, render_init_conf

TRICKY = """echo "it's $HOME" `id -u` > /newroot/x
IMGKIT_HOOK_END
  IMGKIT_HOOK_END_1
cat <<'EOF'
nested
EOF
printf '%s\\n' 'back\\slash' "tab\there" """


def test_shell_hooks_reach_sh_verbatim(tmp_path):
    cfg = InitConfig(root="PARTLABEL=r", after_root=(ShellHook(TRICKY), ("touch", "/a b"),
                                                     ShellHook("echo two\n")))
    conf = render_init_conf(cfg)
    prelude = 'run_hook_script() { echo "[$1]"; cat; echo "[end]"; }\n'
    out = source_conf(conf, tmp_path, prelude + "hook_after_root\n")
    assert out == ("[after_root]\n" + TRICKY + "\n[end]\n"
                   "after_root: <touch> </a b>\n"
                   "[after_root]\necho two\n[end]\n")


def test_shell_hook_runs_in_busybox_sh(tmp_path):
    """The init's own run_hook_script (copied from init.sh) runs the script with sh -s."""
    from imgkit.vm.guest_init import init_script
    script = init_script().decode()
    start = script.index("run_hook_script() {")
    func = script[start:script.index("}\n", start) + 2]
    cfg = InitConfig(root="PARTLABEL=r", before_exec=(
        ShellHook(f"cd {tmp_path}\nfor i in 1 2 3; do echo $i >> n; done\nexit 3\n"),))
    out = source_conf(render_init_conf(cfg), tmp_path,
                      'say() { echo "imgkit-init: $*"; }\n' + func + "hook_before_exec\n")
    assert (tmp_path / "n").read_text() == "1\n2\n3\n"
    assert out == "imgkit-init: warning: before_exec hook script exited with status 3\n"


def test_hooks_from_the_config(tmp_path):
    (tmp_path / "c.toml").write_text(
        "[trees.i]\ninit = 'busybox'\n[trees.i.init_config]\nroot = '/dev/vda'\n"
        "switch = 'pivot_root'\n"
        "after_root = [{ shell = '''\necho hi > /newroot/x\n''' }, ['sync']]\n"
        "[initramfs.i]\ntree = 'i'\ncompress = 'none'\noutput = 'i.cpio'\n")
    imgkit("build", str(tmp_path / "c.toml"), "-O", str(tmp_path / "out"), "-q")
    from conftest import sh
    conf = sh("sh", "-c", f"cd {tmp_path} && cpio -i --to-stdout etc/imgkit/init.conf "
                          f"< out/i.cpio")
    assert "run_hook_script after_root <<'IMGKIT_HOOK_END'\necho hi > /newroot/x\n" \
           "IMGKIT_HOOK_END\n" in conf
    assert "run_hook after_root sync" in conf and "switch=pivot_root" in conf


@pytest.mark.parametrize("body, message", [
    ("after_root = [{ sh = 'x' }]", "expected a list of argv lists"),
    ("after_root = [{ shell = 1 }]", "or { shell = \"script\" } tables"),
    ("idmap = '0 100000 65536'", "init config idmap: expected u|g|b:ON_DISK:SEEN:COUNT"),
    ("switch = 'pivot'", "expected one of switch_root, chroot, pivot_root"),
])
def test_hook_switch_and_idmap_errors(tmp_path, body, message):
    (tmp_path / "c.toml").write_text(
        f"[trees.i]\ninit = 'busybox'\n[trees.i.init_config]\nroot = '/dev/vda'\n{body}\n"
        "[initramfs.i]\ntree = 'i'\noutput = 'i.cpio'\n")
    r = imgkit("build", str(tmp_path / "c.toml"), "-O", str(tmp_path / "out"), "-q", check=False)
    assert r.returncode == 1 and message in r.stderr, r.stderr


# -- boots ----------------------------------------------------------------------------------------

PIVOT_OVERLAY = """root = "PARTLABEL=sq"
fstype = "squashfs"
lowers = ["PARTLABEL=ext"]
upper = "tmpfs"
switch = "pivot_root"
after_root = [{ shell = '''
set -e
word=shell-hook
echo "$word-wrote-this" > /newroot/hooked
''' }]
command = ["/bin/busybox", "sh", "/check"]"""

CHROOT_SQUASHFS = """root = "PARTLABEL=sq"
fstype = "squashfs"
switch = "chroot"
before_exec = [{ shell = "echo chroot-hook > /newroot/dev/hooked-note" }]
command = ["/bin/busybox", "sh", "/check"]"""


@pytest.mark.boot
def test_boot_pivot_root_into_an_overlay_with_a_shell_hook(tmp_path):
    out = build_stack(tmp_path, PIVOT_OVERLAY)
    log = boot_direct(out, "LIVE-DONE")
    assert "entering the root with pivot_root (old root on /tmp)" in log, log[-3000:]
    assert "LIVE-ROOT ext4-over-squashfs shell-hook-wrote-this" in log, log[-3000:]
    assert "MOUNT overlay / overlay" in log, log[-3000:]
    assert "cannot detach the old root" not in log and "ERROR" not in log, log[-3000:]


@pytest.mark.boot
def test_boot_chroot_into_a_squashfs_root(tmp_path):
    out = build_stack(tmp_path, CHROOT_SQUASHFS)
    log = boot_direct(out, "LIVE-DONE")
    assert "LIVE-ROOT squashfs chroot-hook" in log, log[-3000:]
