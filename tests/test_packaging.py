"""The wheel carries every module, with formats/ and bootloaders/ inside the imgkit package."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_contains_every_module(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "*.egg-info",
                                                              "__pycache__", "build", "out"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True)
    (wheel,) = glob.glob(str(tmp_path / "dist" / "imgkit-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for local, installed in (("imgkit", "imgkit"), ("formats", "imgkit/formats"),
                             ("bootloaders", "imgkit/bootloaders")):
        for path in glob.glob(os.path.join(REPO, local, "**", "*.py"), recursive=True):
            expected.add(installed + "/" + os.path.relpath(path, os.path.join(REPO, local)))
    expected.add("imgkit/data/init.sh")
    assert expected <= names, sorted(expected - names)
    assert not any(n.startswith(("formats/", "bootloaders/", "tests/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "imgkit = imgkit.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
