"""Untrusted images and trees must not reach outside themselves: a qcow2 never makes imgkit
read a host file or open a connection it names."""
from __future__ import annotations

import json
import socket
import subprocess
import sys

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
