"""Same inputs and SOURCE_DATE_EPOCH give bit-identical archives."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time

import pytest


def build_tree(root, umask: int, order: list[str]):
    old = os.umask(umask)
    try:
        for name in order:  # creation order differs: directory order and inodes differ
            (root / "d").mkdir(parents=True, exist_ok=True)
            (root / "d" / name).write_text(name * 100)
            os.chmod(root / "d" / name, 0o644)
        os.chmod(root / "d", 0o755)
        os.chmod(root, 0o755)
        os.symlink("d/a", root / "link")
        os.link(root / "d" / "a", root / "hard")
    finally:
        os.umask(old)


def run_cli(*args, env):
    return subprocess.run([sys.executable, "-m", "imgkit", *args], env=env,
                          capture_output=True, check=True)


@pytest.mark.parametrize("kind,suffix", [("initramfs", "cpio.zst"), ("initramfs", "cpio.gz"),
                                          ("initramfs", "cpio.xz"), ("tar", "tar.gz")])
def test_two_builds_are_identical(tmp_path, kind, suffix):
    a, b = tmp_path / "one" / "src", tmp_path / "elsewhere" / "deeper" / "src"
    build_tree(a, 0o022, ["a", "b", "c"])
    time.sleep(1.1)  # different mtimes and ctimes on the second copy
    build_tree(b, 0o077, ["c", "a", "b"])
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
    out_a, out_b = tmp_path / f"a.{suffix}", tmp_path / f"b.{suffix}"
    run_cli(kind, str(a), "-o", str(out_a), env=env)
    os.utime(b / "d" / "b", (time.time() + 50, time.time() + 50))
    run_cli(kind, str(b), "-o", str(out_b), env=env)
    def digest(p):
        return hashlib.sha256(p.read_bytes()).hexdigest()
    assert digest(out_a) == digest(out_b)
