"""``imgkit virt``: a command run as root in a throwaway VM that sees only one directory.

Boots are few and shared (each costs a few seconds under TCG): one VM runs a command that
exercises output separation, exit status, argument passing, the environment, file
ownership and confinement at once; the other boots cover the timeout, a read-only share, a
missing command, a root image and a VM that cannot mount its share. The guest's view is
checked through real tools in the guest (busybox ``sh``, ``printf``, ``stat``) and on the
host (``sfdisk`` and ``mke2fs`` build the root image, ``pgrep`` looks for leftover QEMUs,
the host's ``sh`` sources the generated argument file).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from imgkit.errors import BootError, InputError, ToolError
from imgkit.vm import kernel, virt

ARGS = ["a b", "", "it's", 'say "hi"', "ünïcödé ✓", "new\nline", "$HOME", "*", "-n", "\\", " "]
PY = sys.executable
VM_TIMEOUT = 150  # --timeout of every VM: TCG on a busy 2-core CI machine


@pytest.fixture(scope="module")
def debian_kernel():
    return kernel.fetch_debian_kernel(os.environ.get("IMGKIT_CACHE"))


def virt_cli(args, cwd, *, env=None, timeout=VM_TIMEOUT):
    """``python -m imgkit.cli.virt ARGS`` in ``cwd``; returns the CompletedProcess (bytes).
    Every VM gets ``--timeout`` unless ARGS has its own."""
    if "--timeout" not in args:
        args = ["--timeout", str(timeout), *args]
    return subprocess.run([PY, "-m", "imgkit.cli.virt", *args], cwd=cwd, capture_output=True,
                          timeout=timeout + 60, env={**os.environ, **(env or {})})


# -- without a VM ----------------------------------------------------------------------------
def test_run_config_round_trips_through_a_real_shell(tmp_path):
    conf, env = virt.run_config(virt.VirtSpec(command=tuple(ARGS),
                                              env=(("GREETING", "hello 'world'\n"),)))
    (tmp_path / "conf").write_bytes(conf)
    (tmp_path / "env").write_bytes(env)
    for shell in ("sh", "busybox"):
        argv = [shell] + (["sh"] if shell == "busybox" else [])
        out = subprocess.run(argv + ["-c", '. ./conf; . ./env; printf "[%s]\\n" "$@"; '
                                     'printf "<%s>" "$GREETING"'],
                             cwd=tmp_path, capture_output=True, check=True).stdout.decode()
        assert out == "".join(f"[{a}]\n" for a in ARGS) + "<hello 'world'\n>", shell


def test_run_config_rejects_bad_input():
    with pytest.raises(InputError, match="no command"):
        virt.run_config(virt.VirtSpec(command=()))
    with pytest.raises(InputError, match="environment variable name"):
        virt.run_config(virt.VirtSpec(command=("true",), env=(("1BAD", "x"),)))


def test_vm_argv_is_minimal(tmp_path):
    prepared = virt.Prepared("/k/vmlinux", "/c/initrd.cpio",
                             kernel.KernelInfo("/k/vmlinuz", None, "x"), True)
    socks = {n: str(tmp_path / n) for n in ("out", "err", "ctl")}
    spec = virt.VirtSpec(command=("true",), workdir=str(tmp_path), share_ro=True, memory=256)
    argv = virt.vm_argv(spec, prepared, "/r/initrd", socks, accel="tcg")
    assert {"-nodefaults", "-no-user-config", "-no-reboot"} <= set(argv)
    assert argv[argv.index("-kernel") + 1] == "/k/vmlinux"
    assert "quiet" in argv[argv.index("-append") + 1].split()
    assert argv.count("-serial") == 4 and argv[argv.index("-serial") + 1] == "stdio"
    share = argv[argv.index("-virtfs") + 1]
    assert f"path={tmp_path}" in share and "readonly=on" in share and "mount_tag=work" in share
    assert "-bios" not in argv and "-drive" not in argv


def test_root_shares_with_mapped_xattr(tmp_path, monkeypatch):
    """As root, the guest's chmod u+s or mknod must not reach the host directory."""
    prepared = virt.Prepared("/k/vmlinux", "/c/initrd.cpio",
                             kernel.KernelInfo("/k/vmlinuz", None, "x"), True)
    socks = {n: str(tmp_path / n) for n in ("out", "err", "ctl")}
    spec = virt.VirtSpec(command=("true",), workdir=str(tmp_path), memory=256)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    share = virt.vm_argv(spec, prepared, "/r/initrd", socks, accel="tcg")
    assert "security_model=mapped-xattr" in share[share.index("-virtfs") + 1]
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    share = virt.vm_argv(spec, prepared, "/r/initrd", socks, accel="tcg")
    assert "security_model=none" in share[share.index("-virtfs") + 1]


@pytest.mark.boot
@pytest.mark.skipif(os.geteuid() != 0, reason="privilege: the escape exists only as root")
def test_guest_setuid_does_not_reach_the_host_as_root(debian_kernel, tmp_path):
    work = tmp_path / "suid-work"
    work.mkdir()
    proc = virt_cli(["--kernel", debian_kernel.vmlinuz, "--", "sh", "-c",
                     "echo x > prog && chmod 4755 prog && ls -l prog"], work)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().startswith("-rwsr-xr-x")  # the guest sees its own bits
    st = (work / "prog").stat()
    assert not st.st_mode & 0o6000, oct(st.st_mode)


def test_memory_sizes():
    from imgkit.cli.virt import parse_memory
    assert parse_memory("512") == 512 and parse_memory("512M") == 512
    assert parse_memory("2G") == 2048 and parse_memory("1GiB") == 1024
    with pytest.raises(InputError):
        parse_memory("lots")


def test_no_kernel_says_how_to_get_one(monkeypatch):
    def offline(*a, **k):
        raise ToolError("apt-cache knows no package 'linux-image-amd64'")
    monkeypatch.setattr(kernel, "host_kernel", lambda: None)
    monkeypatch.setattr(kernel, "any_cached_kernel", lambda root: None)
    monkeypatch.setattr(kernel, "fetch_debian_kernel", offline)
    with pytest.raises(ToolError, match="no kernel to boot") as info:
        virt.select_kernel()
    assert "--kernel" in info.value.hint and "apt-get update" in info.value.hint


def test_no_qemu(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = virt_cli(["--", "true"], tmp_path, env={"PATH": str(empty)}, timeout=60)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "qemu-system-x86_64" in err and "apt-get install qemu-system-x86" in err


def test_no_command(tmp_path):
    proc = virt_cli(["--share-ro"], tmp_path, timeout=60)
    assert proc.returncode == 1 and b"no command given" in proc.stderr


# -- boots -----------------------------------------------------------------------------------

SCRIPT = r"""
echo out
echo err >&2
printf '[%s]\n' "$@"
printf '%s' "$GREETING" > env.txt
echo made-in-guest > created.txt
mkdir -p made-dir
{ id -u; ls -a /work; cat ../sibling/secret.txt; cat /work/../sibling/secret.txt;
  find / /work -xdev -type f -exec grep -l TOPSECRET {} + ; echo done; } > confined.txt 2>&1
exit 3
"""


@pytest.fixture(scope="module")
def main_run(debian_kernel, tmp_path_factory):
    """One boot shared by the tests below."""
    base = tmp_path_factory.mktemp("virt")
    work, sibling = base / "work", base / "sibling"
    work.mkdir()
    sibling.mkdir()
    (sibling / "secret.txt").write_text("TOPSECRET\n")
    (work / "existing.txt").write_text("from the host\n")
    start = time.monotonic()
    proc = virt_cli(["--kernel", debian_kernel.vmlinuz, "--env", "GREETING=hello 'world' ✓",
                     "--", "sh", "-c", SCRIPT, "sh", *ARGS], work)
    return proc, work, time.monotonic() - start


@pytest.mark.boot
def test_stdout_stderr_and_status_are_separate(main_run):
    proc, _, _ = main_run
    assert proc.returncode == 3, proc.stderr.decode()
    lines = proc.stdout.decode().split("\n", 1)
    assert lines[0] == "out"
    assert proc.stderr == b"err\n"


@pytest.mark.boot
def test_arguments_arrive_unchanged(main_run):
    proc, _, _ = main_run
    assert proc.stdout.decode() == "out\n" + "".join(f"[{a}]\n" for a in ARGS)


@pytest.mark.boot
def test_environment(main_run):
    _, work, _ = main_run
    assert (work / "env.txt").read_text() == "hello 'world' ✓"


@pytest.mark.boot
def test_guest_files_belong_to_the_invoking_user(main_run):
    _, work, _ = main_run
    for name in ("created.txt", "made-dir"):
        st = (work / name).stat()
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), name
    assert (work / "created.txt").read_text() == "made-in-guest\n"


@pytest.mark.boot
def test_only_the_directory_is_visible(main_run):
    _, work, _ = main_run
    text = (work / "confined.txt").read_text()
    lines = text.splitlines()
    assert lines[0] == "0"  # root in the guest
    assert "existing.txt" in text and "sibling" not in text.replace("/sibling/", "")
    assert "TOPSECRET" not in text
    assert text.count("No such file or directory") == 2
    assert lines[-1] == "done"


@pytest.mark.boot
def test_timeout_kills_the_vm(debian_kernel, tmp_path):
    work = tmp_path / "timeout-marker-work"
    work.mkdir()
    start = time.monotonic()
    proc = virt_cli(["--kernel", debian_kernel.vmlinuz, "--timeout", "5", "--",
                     "sleep", "1000"], work)
    elapsed = time.monotonic() - start
    assert proc.returncode == 124, proc.stderr.decode()
    assert elapsed < 30
    # QEMU's command line names the shared directory: nothing may be left running
    left = subprocess.run(["pgrep", "-f", str(work)], capture_output=True, text=True)
    assert left.stdout == "", left.stdout


@pytest.mark.boot
def test_read_only_share(debian_kernel, tmp_path):
    (tmp_path / "existing.txt").write_text("readable\n")
    proc = virt_cli(["--kernel", debian_kernel.vmlinuz, "--share-ro", "--", "sh", "-c",
                     "cat existing.txt; if echo x > new.txt; then exit 0; else exit 9; fi"],
                    tmp_path)
    assert proc.returncode == 9, proc.stderr.decode()
    assert proc.stdout == b"readable\n"
    assert not (tmp_path / "new.txt").exists()


@pytest.mark.boot
def test_missing_command_is_127(debian_kernel, tmp_path):
    proc = virt_cli(["--kernel", debian_kernel.vmlinuz, "--", "no-such-command", "x"], tmp_path)
    assert proc.returncode == 127
    assert b"imgkit virt: no-such-command: not found" in proc.stderr
    assert proc.stdout == b""


def _root_image(tmp_path):
    """A GPT disk whose second partition is an ext4 root holding a static busybox."""
    stage = tmp_path / "stage"
    for d in ("bin", "etc", "proc", "sys", "dev", "work"):
        (stage / d).mkdir(parents=True)
    shutil.copy("/bin/busybox", stage / "bin" / "busybox")
    for applet in ("sh", "cat", "echo", "stat"):
        os.symlink("busybox", stage / "bin" / applet)
    (stage / "etc" / "marker").write_text("inside the image\n")
    fs = tmp_path / "root.ext4"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(stage), str(fs), "16M"],
                   check=True, capture_output=True)
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(20 << 20)
    subprocess.run(["sfdisk", "-q", str(disk)], check=True, capture_output=True,
                   input=b"label: gpt\nstart=2048, size=2048, type=uefi\n"
                         b"start=4096, size=32768, type=linux\n")
    with open(fs, "rb") as src, open(disk, "r+b") as dst:
        dst.seek(4096 * 512)
        shutil.copyfileobj(src, dst)
    return disk


@pytest.mark.boot
def test_root_image(debian_kernel, tmp_path):
    disk = _root_image(tmp_path)
    before = disk.read_bytes()
    work = tmp_path / "work"
    work.mkdir()
    proc = virt_cli(["--kernel", debian_kernel.vmlinuz, "--image", str(disk), "--", "sh", "-c",
                     "cat /etc/marker; echo changed > /etc/marker; echo hi > from-image.txt; "
                     "ls /bin"], work)
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert out.startswith("inside the image\n")
    assert "mount" not in out  # the image's /bin, not the initramfs's busybox links
    assert (work / "from-image.txt").read_text() == "hi\n"
    assert disk.read_bytes() == before  # snapshot=on: the image is never modified


@pytest.mark.boot
def test_boot_failure_shows_the_console(debian_kernel, tmp_path):
    """A kernel without its modules cannot mount the share: the error names it and shows
    the console's last lines."""
    lonely = tmp_path / "k" / "vmlinuz"
    lonely.parent.mkdir()
    shutil.copy(debian_kernel.vmlinuz, lonely)
    work = tmp_path / "work"
    work.mkdir()
    proc = virt_cli(["--kernel", str(lonely), "--", "true"], work)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "cannot mount the 9p share" in err
    assert "last console lines" in err and "imgkit-virt: ERROR" in err


@pytest.mark.boot
def test_library_reports_qemu_failures(tmp_path):
    """QEMU refusing the kernel file: a BootError carrying QEMU's own message."""
    bogus = tmp_path / "vmlinuz"
    bogus.write_bytes(b"not a kernel" * 100)
    with pytest.raises(BootError, match="failed to boot") as info:
        virt.run_vm(virt.VirtSpec(command=("true",), workdir=str(tmp_path), kernel=str(bogus),
                                  timeout=60))
    assert "QEMU stderr" in str(info.value)


# -- a container image as the root ----------------------------------------------------------------

def _umoci(*args: str) -> None:
    rootless = ("--rootless",) if os.geteuid() != 0 and args[0] == "unpack" else ()
    subprocess.run(["umoci", args[0], *rootless, *args[1:]], check=True, capture_output=True)


@pytest.fixture(scope="module")
def app_image(tmp_path_factory) -> str:
    """An OCI layout made by umoci: a static busybox, /app/hello, and a config whose
    Entrypoint/Cmd runs it in WorkingDir /app with GREETING in Env."""
    if shutil.which("umoci") is None:
        raise AssertionError("umoci is missing (packages.txt lists it)")
    d = tmp_path_factory.mktemp("app")
    img, bundle = str(d / "layout"), str(d / "bundle")
    _umoci("init", "--layout", img)
    _umoci("new", "--image", f"{img}:base")
    _umoci("unpack", "--image", f"{img}:base", bundle)
    rootfs = os.path.join(bundle, "rootfs")
    for sub in ("bin", "app", "etc", "root"):
        os.makedirs(os.path.join(rootfs, sub), exist_ok=True)
    shutil.copy("/bin/busybox", os.path.join(rootfs, "bin", "busybox"))
    for name in ("sh", "pwd", "echo", "cat"):
        os.symlink("busybox", os.path.join(rootfs, "bin", name))
    with open(os.path.join(rootfs, "app", "hello"), "w") as f:
        f.write('#!/bin/sh\necho "$GREETING from $(pwd), args: $*"\n')
    os.chmod(os.path.join(rootfs, "app", "hello"), 0o755)
    _umoci("repack", "--image", f"{img}:files", bundle)
    _umoci("config", "--image", f"{img}:files", "--tag", "app", "--config.entrypoint=/app/hello",
           "--config.cmd=one", "--config.env=GREETING=hello", "--config.workingdir=/app")
    return f"oci:{img}:app"


@pytest.mark.boot
def test_container_image_runs_its_own_command_in_its_working_dir(debian_kernel, app_image,
                                                                 tmp_path):
    proc = virt_cli(["--kernel", debian_kernel.vmlinuz, "--image", app_image], tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode() == "hello from /app, args: one\n"


@pytest.mark.boot
def test_container_image_with_a_command_runs_it_in_the_share(debian_kernel, app_image,
                                                              tmp_path):
    proc = virt_cli(["--kernel", debian_kernel.vmlinuz, "--image", app_image, "--env",
                     "EXTRA=2", "--", "sh", "-c", 'echo "$GREETING $EXTRA $(pwd)" > out.txt'],
                    tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert (tmp_path / "out.txt").read_text() == "hello 2 /work\n"
    assert not [p for p in tmp_path.iterdir() if p.name != "out.txt"]


def test_container_image_without_a_command_is_one_error(app_image, tmp_path):
    layout = app_image.split(":")[1]
    _umoci("config", "--image", f"{layout}:files", "--tag", "bare")
    proc = virt_cli(["--image", f"oci:{layout}:bare"], tmp_path, timeout=60)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "names none (no Entrypoint or Cmd" in err, err
    assert "Traceback" not in err
