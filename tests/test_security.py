"""Untrusted images and trees must not reach outside themselves: a qcow2 never makes imgkit
read a host file or open a connection it names."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

from imgkit.formats import qcow2

SECRET = "imgkit-host-secret-7f3a"


def imgkit(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "imgkit", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def qemu_img(*args):
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


@pytest.fixture
def listener():
    """A local TCP port that records whether anything connected to it."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4)
    s.setblocking(False)
    yield s
    s.close()


def _nothing_connected(s: socket.socket) -> bool:
    try:
        conn, _ = s.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


def _host_secret(tmp_path):
    secret = tmp_path / "host-secret"
    secret.write_bytes((SECRET + "\n").encode() * 4096)
    return secret


def _hostile(tmp_path, kind, port):
    img = tmp_path / f"{kind}.qcow2"
    if kind == "backing":
        qemu_img("create", "-q", "-f", "qcow2", "-b", str(_host_secret(tmp_path)), "-F", "raw",
                 str(img), "1M")
    elif kind == "backing-passwd":
        qemu_img("create", "-q", "-f", "qcow2", "-b", "/etc/passwd", "-F", "raw", str(img), "1M")
    elif kind == "data-file":
        data = _host_secret(tmp_path)
        qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={data},data_file_raw=on",
                 str(img), "1M")
        data.write_bytes((SECRET + "\n").encode() * 4096)  # create truncated it
    elif kind == "nbd":
        qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", f"nbd://127.0.0.1:{port}",
                 "-F", "raw", str(img), "1M")
    return img


KINDS = ["backing", "backing-passwd", "data-file", "nbd"]


@pytest.mark.parametrize("kind", KINDS)
def test_header_names_what_qemu_img_sees(tmp_path, listener, kind):
    img = _hostile(tmp_path, kind, listener.getsockname()[1])
    info = {} if kind == "nbd" else json.loads(subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", "-f", "qcow2", str(img)],
        capture_output=True, text=True, check=True).stdout)
    with open(img, "rb") as f:
        header = qcow2.read_header(f)
    assert header.references()
    if kind == "data-file":
        assert header.external_data
        assert header.data_file == info["format-specific"]["data"]["data-file"]
    elif kind == "nbd":
        assert header.backing_file == f"nbd://127.0.0.1:{listener.getsockname()[1]}"
    else:
        assert header.backing_file == info["backing-filename"]
    assert _nothing_connected(listener)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", [["ls"], ["ls", "-n"], ["inspect"], ["inspect", "--json"],
                                     ["run", "--print-cmdline"]])
def test_hostile_qcow2_is_refused(tmp_path, listener, kind, command):
    img = _hostile(tmp_path, kind, listener.getsockname()[1])
    targets = [str(img)] if command[0] != "ls" else [str(img), f"{img}:1"]
    for target in targets:
        r = imgkit(*command, target)
        assert r.returncode == 1, (r.stdout, r.stderr)
        errors = [line for line in r.stderr.splitlines() if line.startswith("imgkit: error:")]
        assert len(errors) == 1 and "qcow2 image refers to" in errors[0], r.stderr
        assert "Traceback" not in r.stderr
        assert SECRET not in r.stdout + r.stderr and "root:x:" not in r.stdout + r.stderr
    assert _nothing_connected(listener)


def test_plain_qcow2_still_reads(tmp_path):
    raw = tmp_path / "d.raw"
    subprocess.run(["truncate", "-s", "4M", str(raw)], check=True)
    subprocess.run(["sgdisk", "-n", "1:2048:0", "-t", "1:ef00", str(raw)], check=True,
                   capture_output=True)
    img = tmp_path / "d.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(img))
    r = imgkit("inspect", "--json", str(img))
    assert r.returncode == 0, r.stderr
    parts = json.loads(r.stdout)["qcow2"]["contents"]["table"]["partitions"]
    assert len(parts) == 1


# -- setuid bits under the default owner policy ------------------------------------------------

BUILDER = 65534  # who builds when the suite runs as root: nobody, as in CI


def _as_builder(argv: list[str]) -> list[str]:
    if os.getuid() != 0:
        return argv
    return ["setpriv", f"--reuid={BUILDER}", f"--regid={BUILDER}", "--clear-groups", *argv]


@pytest.fixture
def builder_dir():
    """A directory owned by the builder (the invoking user, or nobody when run as root) with a
    setuid and a setgid program and a plain one, all writable by the builder."""
    top = tempfile.mkdtemp(prefix="imgkit-suid-", dir="/tmp")
    os.chmod(top, 0o755)
    src = os.path.join(top, "src")
    os.mkdir(src)
    modes = {"suid": 0o4755, "sgid": 0o2755, "plain": 0o755}
    for name in modes:
        with open(os.path.join(src, name), "w") as f:
            f.write("#!/bin/sh\n")
    if os.getuid() == 0:
        for n in (top, src, *(os.path.join(src, x) for x in modes)):
            os.chown(n, BUILDER, BUILDER)
    for name, mode in modes.items():  # after chown, which clears setuid bits
        os.chmod(os.path.join(src, name), mode)
    yield top, src
    shutil.rmtree(top)


def _bsdtar_modes(path: str) -> dict[str, tuple[str, str, str]]:
    out = subprocess.run(["bsdtar", "-tvnf", path], capture_output=True, text=True,
                         check=True).stdout
    rows = {}
    for line in out.splitlines():
        f = line.split()
        rows[f[-1].lstrip("./")] = (f[0], f[2], f[3])
    return rows


def test_default_owner_drops_setuid_of_builder_files(builder_dir):
    top, src = builder_dir
    out = os.path.join(top, "out.tar")
    r = subprocess.run(_as_builder([sys.executable, "-m", "imgkit", "tar", src, "-o", out]),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = _bsdtar_modes(out)
    assert rows["suid"] == ("-rwxr-xr-x", "0", "0")
    assert rows["sgid"] == ("-rwxr-xr-x", "0", "0")
    assert rows["plain"] == ("-rwxr-xr-x", "0", "0")


def test_explicit_owner_keeps_setuid(builder_dir):
    top, src = builder_dir
    out = os.path.join(top, "out.tar")
    uid = BUILDER if os.getuid() == 0 else os.getuid()
    gid = BUILDER if os.getuid() == 0 else os.getgid()
    r = subprocess.run(_as_builder([sys.executable, "-m", "imgkit", "tar", src, "-o", out,
                                    "--host-owners", "--root-uid", str(uid),
                                    "--root-gid", str(gid)]), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = _bsdtar_modes(out)
    assert rows["suid"] == ("-rwsr-xr-x", "0", "0")
    assert rows["sgid"] == ("-rwxr-sr-x", "0", "0")


def test_dropped_bits_are_listed(builder_dir, monkeypatch):
    from imgkit.sources.directory import read_directory

    _, src = builder_dir
    if os.getuid() == 0:  # read as the builder would
        monkeypatch.setattr(os, "getuid", lambda: BUILDER)
        monkeypatch.setattr(os, "getgid", lambda: BUILDER)
    tree = read_directory(src)
    assert [w for w in tree.warnings if "/suid" in w and "/sgid" in w and "/plain" not in w]
    assert read_directory(src, host_owners=True).warnings == []


@pytest.mark.skipif(os.getuid() != 0, reason="privilege: needs root to own a setuid-root file")
def test_root_owned_setuid_is_kept_for_root(tmp_path):
    (tmp_path / "src").mkdir()
    prog = tmp_path / "src" / "su"
    prog.write_text("#!/bin/sh\n")
    os.chmod(prog, 0o4755)
    out = tmp_path / "out.tar"
    r = imgkit("tar", str(tmp_path / "src"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert _bsdtar_modes(str(out))["su"] == ("-rwsr-xr-x", "0", "0")


# -- firmware of a qcow2, read from the disk inside it ------------------------------------------

def _qcow2_of(tmp_path, name, setup):
    raw = tmp_path / f"{name}.raw"
    subprocess.run(["truncate", "-s", "8M", str(raw)], check=True)
    setup(str(raw))
    img = tmp_path / f"{name}.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(img))
    return str(img)


def _gpt_esp(raw):
    subprocess.run(["sgdisk", "-n", "1:2048:0", "-t", "1:ef00", raw], check=True,
                   capture_output=True)


def _mbr_with_code(raw):
    subprocess.run(["sfdisk", "-q", raw], input="2048,,83,*\n", text=True, check=True)
    with open(raw, "r+b") as f:
        f.write(b"\xfa\xeb\xfe" + b"\x90" * 61)  # boot code in the first 440 bytes


@pytest.mark.parametrize(("setup", "firmware"), [(_gpt_esp, "uefi"), (_mbr_with_code, "bios")])
def test_run_picks_firmware_from_the_disk_inside_a_qcow2(tmp_path, setup, firmware):
    from imgkit.vm.runimage import spec_for

    img = _qcow2_of(tmp_path, firmware, setup)
    spec, kind = spec_for(img)
    assert (spec.firmware, kind.format, spec.drives[0].format) == (firmware, "qcow2", "qcow2")
    assert spec_for(img, firmware="bios")[0].firmware == "bios"


def test_run_firmware_read_refuses_a_backing_file(tmp_path, listener):
    from imgkit.errors import ImageError
    from imgkit.vm.runimage import classify

    img = _hostile(tmp_path, "nbd", listener.getsockname()[1])
    with pytest.raises(ImageError, match="backing file"):
        classify(str(img))
    assert _nothing_connected(listener)
