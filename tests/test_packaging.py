"""The wheel carries every module, with formats/ and bootloaders/ inside the imgkit package,
the data files and the py.typed marker; building it raises no setuptools warning."""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """(path of the wheel pip builds from a clean copy of the checkout, pip's verbose log)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    skip = shutil.ignore_patterns(".git", ".venv", "*.egg-info", ".*_cache", "__pycache__",
                                  "build", "out")
    shutil.copytree(REPO, src, ignore=skip)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps",
                        "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (path,) = glob.glob(str(tmp / "dist" / "imgkit-*.whl"))
    return path, r.stdout + r.stderr


def test_wheel_contains_every_module(wheel):
    names = set(zipfile.ZipFile(wheel[0]).namelist())
    expected = set()
    for local, installed in (("imgkit", "imgkit"), ("formats", "imgkit/formats"),
                             ("bootloaders", "imgkit/bootloaders")):
        for path in glob.glob(os.path.join(REPO, local, "**", "*.py"), recursive=True):
            expected.add(installed + "/" + os.path.relpath(path, os.path.join(REPO, local)))
    assert expected <= names, sorted(expected - names)
    assert not any(n.startswith(("formats/", "bootloaders/", "tests/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "imgkit = imgkit.cli:main" in zipfile.ZipFile(wheel[0]).read(entry_points).decode()


def test_wheel_carries_data_files_and_py_typed(wheel):
    names = set(zipfile.ZipFile(wheel[0]).namelist())
    data = {"imgkit/data/" + n for n in os.listdir(os.path.join(REPO, "imgkit", "data"))}
    assert data and data <= names, sorted(data - names)
    assert "imgkit/py.typed" in names


def test_wheel_metadata_works_without_extras(wheel):
    z = zipfile.ZipFile(wheel[0])
    meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in meta
    # zstd is the initramfs default: a plain install must be able to write it
    plain = [line for line in meta.splitlines()
             if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert any(re.match(r"Requires-Dist: zstandard\b", line) for line in plain), plain


def test_building_the_wheel_warns_of_nothing(wheel):
    # setuptools' own warnings (SetuptoolsDeprecationWarning, "Package ... is absent from
    # the `packages` configuration") are Python warnings with a class name ending in Warning
    warnings = [line.strip() for line in wheel[1].splitlines() if re.search(r"\w+Warning\b", line)]
    assert not warnings, warnings
