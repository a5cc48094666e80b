"""The QEMU runner: command lines (pure), accelerator choice, firmware lookup, and the console
watcher's behaviour driven by stand-in QEMU scripts (fast, no VM needed)."""
from __future__ import annotations

import io
import os
import subprocess
import time

import pytest

from imgkit import tools
from imgkit.errors import BootError, InputError, ToolError
from imgkit.vm import firmware, qemu
from imgkit.vm.qemu import Drive, QemuSpec, Share


def _pairs(argv, flag):
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_argv_direct_kernel():
    spec = QemuSpec(kernel="/k/vmlinuz", initrd="/k/initrd.zst", append="console=ttyS0 quiet",
                    memory=256, cpus=2)
    argv = qemu.build_argv(spec, accel="tcg", qemu="qemu-system-x86_64")
    assert argv[0] == "qemu-system-x86_64"
    assert _pairs(argv, "-accel") == ["tcg"] and _pairs(argv, "-cpu") == ["max"]
    assert _pairs(argv, "-kernel") == ["/k/vmlinuz"]
    assert _pairs(argv, "-initrd") == ["/k/initrd.zst"]
    assert _pairs(argv, "-append") == ["console=ttyS0 quiet"]
    assert _pairs(argv, "-m") == ["256"] and _pairs(argv, "-smp") == ["2"]
    assert _pairs(argv, "-serial") == ["stdio"] and _pairs(argv, "-display") == ["none"]
    assert "-no-reboot" in argv and "-nodefaults" in argv and "-pflash" not in argv
    assert _pairs(qemu.build_argv(spec, accel="kvm"), "-cpu") == ["host"]


def test_argv_drives_shares_uefi(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # the share model of an ordinary user
    spec = QemuSpec(
        drives=(Drive("/img/a,b.img"), Drive("/img/c.qcow2", "ide", "qcow2", readonly=True),
                Drive("/img/d.iso", "cdrom")),
        shares=(Share("/srv/work", "work", readonly=True),),
        firmware="uefi", display="gtk", extra_args=("-s",))
    fw = firmware.UefiFirmware("/fw/CODE.fd", "/fw/VARS.fd")
    argv = qemu.build_argv(spec, uefi=fw, vars_path="/tmp/v.fd")
    drives = _pairs(argv, "-drive")
    assert drives == [
        "if=pflash,format=raw,unit=0,readonly=on,file=/fw/CODE.fd",
        "if=pflash,format=raw,unit=1,file=/tmp/v.fd",
        "file=/img/a,,b.img,format=raw,if=virtio",
        "file=/img/c.qcow2,format=qcow2,if=ide,snapshot=on",
        "file=/img/d.iso,format=raw,if=ide,media=cdrom,readonly=on",
    ]
    assert _pairs(argv, "-virtfs") == [
        "local,path=/srv/work,mount_tag=work,security_model=none,readonly=on"]
    assert _pairs(argv, "-display") == ["gtk"] and argv[-1] == "-s"
    assert _pairs(qemu.build_argv(QemuSpec(display="none")), "-serial") == ["null"]
    assert _pairs(qemu.build_argv(QemuSpec(), interactive=True), "-serial") == ["mon:stdio"]


@pytest.mark.parametrize("spec", [
    QemuSpec(firmware="coreboot"), QemuSpec(display="vnc"), QemuSpec(initrd="/x"),
    QemuSpec(drives=(Drive("/x", "nvme"),)), QemuSpec(drives=(Drive("/x", format="vmdk"),)),
    QemuSpec(firmware="uefi"), QemuSpec(shares=(Share("/x", "a,b"),)), QemuSpec(memory=1),
])
def test_argv_rejects_bad_specs(spec):
    with pytest.raises(InputError):
        qemu.build_argv(spec)


def test_real_qemu_accepts_our_argv(tmp_path):
    """QEMU itself parses a full command line (drives, 9p, UEFI pflash) without complaint:
    with -S it stops before running anything, and stays up until killed."""
    disks = []
    for name in ("a.img", "b.iso", "c.img"):
        (tmp_path / name).write_bytes(b"\0" * 1024 * 1024)
        disks.append(str(tmp_path / name))
    share = tmp_path / "share"
    share.mkdir()
    fw = firmware.find_uefi()
    vars_copy = tmp_path / "vars.fd"
    vars_copy.write_bytes(open(fw.vars_template, "rb").read())
    spec = QemuSpec(drives=(Drive(disks[0]), Drive(disks[1], "cdrom"),
                            Drive(disks[2], "ide", readonly=True)),
                    shares=(Share(str(share), "work", readonly=True),), firmware="uefi",
                    extra_args=("-S",))
    argv = qemu.build_argv(spec, qemu=tools.which("qemu-system-x86_64"), uefi=fw,
                           vars_path=str(vars_copy))
    p = tools.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(1.5)
        assert p.poll() is None, p.stderr.read().decode()
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
        p.stderr.close()


def test_choose_accel(monkeypatch):
    monkeypatch.setenv("IMGKIT_ACCEL", "kvm")
    assert qemu.choose_accel() == "kvm"
    monkeypatch.setenv("IMGKIT_ACCEL", "tcg")
    assert qemu.choose_accel() == "tcg"
    monkeypatch.setenv("IMGKIT_ACCEL", "hvf")
    with pytest.raises(InputError):
        qemu.choose_accel()
    monkeypatch.delenv("IMGKIT_ACCEL")
    if os.path.exists("/sys/module/kvm_pvm") or not os.path.exists("/dev/kvm"):
        assert qemu.choose_accel() == "tcg"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        assert not qemu.kvm_usable()


def test_find_uefi():
    fw = firmware.find_uefi()
    assert os.path.isfile(fw.code) and os.path.isfile(fw.vars_template)
    assert "secboot" not in fw.code and "ms" not in os.path.basename(fw.code).split(".")[1:-1]


# -- the console watcher, with stand-in QEMUs ------------------------------------------------
def _children() -> set[int]:
    """PIDs of live processes whose parent is this test process."""
    me = str(os.getpid())
    out = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            out.add(int(pid))
    return out


def _no_process_with(marker: str) -> bool:
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        return False
            except OSError:
                pass
    return True


@pytest.fixture
def fake_qemu(tmp_path, monkeypatch):
    """Install a shell script as 'QEMU'; its body decides what the 'guest' prints."""
    def make(body: str) -> str:
        path = tmp_path / "fake-qemu"
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(0o755)
        monkeypatch.setattr(qemu, "QEMU", str(path))
        return str(tmp_path)
    monkeypatch.setenv("IMGKIT_ACCEL", "tcg")
    return make


def test_expect_returns_early_and_kills(fake_qemu):
    marker = fake_qemu("printf 'SeaBIOS\\r\\nbooting\\nIMGKIT-MARK'; sleep 0.3; "
                       "printf 'ER-42\\n'; exec sleep 600")
    out = io.StringIO()
    t = time.monotonic()
    r = qemu.boot(QemuSpec(), expect="IMGKIT-MARKER-42", timeout=20, console=out)
    assert time.monotonic() - t < 10
    assert r.matched == "IMGKIT-MARKER-42" and r.returncode is not None
    assert "\r" not in out.getvalue() and "booting" in r.log_tail
    assert _no_process_with(marker) and not _children()


def test_regex_expect_and_binary_console(fake_qemu):
    fake_qemu("echo 'answer: 42'; exec sleep 600")
    out = io.BytesIO()
    r = qemu.boot(QemuSpec(), expect=__import__("re").compile(r"answer: (\d+)"), timeout=20,
                  console=out)
    assert r.matched == "answer: 42" and b"answer" in out.getvalue()


def test_fail_pattern(fake_qemu):
    fake_qemu("echo 'line 1'; echo 'Kernel panic - not syncing: VFS'; exec sleep 600")
    with pytest.raises(BootError) as info:
        qemu.boot(QemuSpec(), expect="never", timeout=20)
    assert "Kernel panic" in str(info.value) and "line 1" in str(info.value)
    assert not _children()


def test_timeout_reports_console_tail(fake_qemu):
    fake_qemu("i=0; while [ $i -lt 50 ]; do echo line-$i; i=$((i+1)); done; exec sleep 600")
    t = time.monotonic()
    with pytest.raises(BootError) as info:
        qemu.boot(QemuSpec(), expect="never", timeout=1.5)
    assert time.monotonic() - t < 6
    msg = str(info.value)
    assert "timed out" in msg and "line-49" in msg and "line-19" not in msg
    assert "line-20" in msg  # the last 30 lines
    assert not _children()


def test_early_exit_shows_stderr_and_command(fake_qemu):
    fake_qemu("echo 'qemu: -foo: invalid option' >&2; exit 1")
    with pytest.raises(BootError) as info:
        qemu.boot(QemuSpec(kernel=None), expect="x", timeout=20)
    msg = str(info.value)
    assert "status 1" in msg and "invalid option" in msg and "-nodefaults" in msg


def test_exit_without_expect(fake_qemu):
    fake_qemu("echo bye; exit 0")
    r = qemu.boot(QemuSpec(), timeout=20)
    assert r.returncode == 0 and r.matched is None and "bye" in r.log
    fake_qemu("echo bye; exit 3")
    with pytest.raises(BootError):
        qemu.boot(QemuSpec(), timeout=20)


def test_keyboard_interrupt_kills_qemu(fake_qemu):
    marker = fake_qemu("while :; do echo tick; sleep 0.05; done")

    class Interrupting(io.StringIO):
        def write(self, s):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        qemu.boot(QemuSpec(), expect="never", timeout=20, console=Interrupting())
    assert _no_process_with(marker) and not _children()


def test_stdin_is_not_a_tty(fake_qemu):
    fake_qemu("if [ -t 0 ]; then echo TTY; else echo NOTTY; fi; "
              "if read x; then echo GOT; else echo EOF; fi; exit 0")
    r = qemu.boot(QemuSpec(), timeout=20)
    assert "NOTTY" in r.log and "EOF" in r.log


def test_missing_qemu_is_a_tool_error(monkeypatch):
    monkeypatch.setattr(qemu, "QEMU", "qemu-system-does-not-exist")
    with pytest.raises(ToolError):
        qemu.boot(QemuSpec(), timeout=1)


def test_missing_input_file(tmp_path):
    with pytest.raises(InputError):
        qemu.boot(QemuSpec(kernel=str(tmp_path / "nope")), timeout=1)


@pytest.mark.parametrize(("euid", "model"), [(1000, "none"), (0, "mapped-xattr")])
def test_share_security_model_follows_the_user(monkeypatch, euid, model):
    """As root, security_model=none would let the guest make setuid-root files on the host."""
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    argv = qemu.build_argv(QemuSpec(shares=(Share("/srv/w", "work"),)))
    assert _pairs(argv, "-virtfs") == [f"local,path=/srv/w,mount_tag=work,security_model={model}"]
    explicit = qemu.build_argv(QemuSpec(shares=(Share("/srv/w", "w", security_model="none"),)))
    assert _pairs(explicit, "-virtfs")[0].endswith("security_model=none")
    with pytest.raises(InputError, match="security model"):
        qemu.build_argv(QemuSpec(shares=(Share("/srv/w", "w", security_model="passthrough"),)))


def test_a_pipe_given_as_stdin_reaches_qemu(fake_qemu):
    fake_qemu("read x; echo \"GOT $x\"; exit 0")
    r, w = os.pipe()
    os.write(w, b"typed\n")
    os.close(w)
    try:
        result = qemu.boot(QemuSpec(), timeout=20, stdin=r)
    finally:
        os.close(r)
    assert "GOT typed" in result.log


def test_print_cmdline_names_a_copy_of_the_uefi_vars(tmp_path):
    """The printed line must not hand QEMU the system's variable store to write."""
    import subprocess
    import sys

    from imgkit.vm.firmware import find_uefi

    template = find_uefi().vars_template
    kernel = tmp_path / "k"
    kernel.write_bytes(b"\0" * 0x202 + b"HdrS" + b"\0" * 1000)
    r = subprocess.run([sys.executable, "-m", "imgkit", "run", "--kernel", str(kernel),
                        "--firmware", "uefi", "--print-cmdline"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    pflash = [a for a in r.stdout.split() if "if=pflash" in a]
    assert len(pflash) == 2 and template not in pflash[1], pflash
    assert "readonly=on" in pflash[0]
    name = os.path.basename(template)
    assert pflash[1].endswith(f"file=COPY-OF-{name}"), pflash
    assert f"each run copies {template}" in r.stderr
