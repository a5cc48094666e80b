"""The start-up section: what a small job costs before any real work.

``imgkit --version`` against a bare ``python -c pass`` of the same interpreter, and
``imgkit build`` of a small GPT disk (two empty 1 MiB partitions) against genimage on the
same layout. imgkit is measured as a user runs it: a wheel built from this checkout and
installed (not editable) into a throwaway venv, whose console script is the ``imgkit``
timed. The development checkout's editable install is shown beside it, for information: its
import hook (setuptools' editable finder) adds some 15 ms to every start. So is the bare import
of the libraries a GPT build needs (argparse, dataclasses, tomllib, construct), the floor under
the ratio.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

import trees
from measure import Command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The layout both sides build: a GPT with two empty 1 MiB partitions at 1 MiB alignment.
SMALL_DISK_TOML = """seed = "bench"

[disk]
output = "disk.img"
table = "gpt"
partitions = [
  { name = "a", type = "linux", size = "1M" },
  { name = "b", type = "linux", size = "1M" },
]
"""

SMALL_DISK_GENIMAGE = """image disk.img {
\thdimage {
\t\tpartition-table-type = "gpt"
\t\talign = 1M
\t}
\tpartition a {
\t\tsize = 1M
\t\tpartition-type-uuid = "0fc63daf-8483-4772-8e79-3d69d8477de4"
\t}
\tpartition b {
\t\tsize = 1M
\t\tpartition-type-uuid = "0fc63daf-8483-4772-8e79-3d69d8477de4"
\t}
}
"""


def _source_digest() -> str:
    """A digest of what goes into the wheel, so an unchanged checkout reuses its venv."""
    h = hashlib.sha256()
    for top in ("pyproject.toml", "imgkit", "formats", "bootloaders"):
        path = os.path.join(REPO, top)
        files = [path] if os.path.isfile(path) else sorted(
            os.path.join(d, n) for d, _, names in os.walk(path) for n in names
            if "__pycache__" not in d)
        for f in files:
            h.update(os.path.relpath(f, REPO).encode() + b"\0")
            with open(f, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()[:16]


def installed_imgkit() -> str:
    """The ``imgkit`` script of a non-editable install of this checkout (made once per
    source digest, under the bench cache); raises RuntimeError when pip cannot make it."""
    # One venv per checkout: checkouts sharing the cache do not remove each other's.
    checkout = hashlib.sha256(REPO.encode()).hexdigest()[:8]
    venv = os.path.join(trees.cache_dir(), f"installed-{checkout}-{_source_digest()}")
    script = os.path.join(venv, "bin", "imgkit")
    if os.access(script, os.X_OK):
        return script
    for old in os.listdir(trees.cache_dir()):
        if old.startswith(f"installed-{checkout}-"):
            shutil.rmtree(os.path.join(trees.cache_dir(), old), ignore_errors=True)
    trees.log("startup: building a wheel of this checkout and installing it in a venv...")
    wheels = venv + ".wheels"
    steps = [[sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, REPO],
             ["/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable,
              "-m", "venv", venv]]
    for argv in steps:
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:4])}...: {r.stderr.strip()[-400:]}")
    (wheel,) = [os.path.join(wheels, n) for n in os.listdir(wheels) if n.endswith(".whl")]
    r = subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", wheel],
                       capture_output=True, text=True)
    shutil.rmtree(wheels, ignore_errors=True)
    if r.returncode != 0:
        shutil.rmtree(venv, ignore_errors=True)
        raise RuntimeError(f"pip install of the wheel failed: {r.stderr.strip()[-400:]}")
    return script


def commands(out: str, have_genimage: bool) -> tuple[list[Command], list[Command], list[str]]:
    """(the --version rows, the small-disk rows, notes); the first row of each is imgkit as
    installed, when it could be installed, else the editable checkout."""
    notes = []
    editable = [sys.executable, "-m", "imgkit"]
    try:
        installed = [installed_imgkit()]
        python = os.path.join(os.path.dirname(installed[0]), "python")
    except (RuntimeError, OSError, ValueError) as exc:
        notes.append(f"no installed copy ({exc}); the editable checkout is measured instead")
        installed, python = editable, sys.executable

    version = [Command("imgkit --version", installed + ["--version"]),
               Command("python -c pass (same interpreter)", [python, "-c", "pass"])]
    if installed is not editable:
        version.append(Command("imgkit --version (editable checkout)", editable + ["--version"]))

    work = os.path.join(out, "startup")
    os.makedirs(work, exist_ok=True)
    toml = os.path.join(work, "small.toml")
    with open(toml, "w") as f:
        f.write(SMALL_DISK_TOML)
    mine = os.path.join(work, "imgkit-out")
    disk = [Command("imgkit build (small GPT)", installed + ["build", "-q", toml, "-O", mine],
                    (mine,))]
    if have_genimage:
        cfg = os.path.join(work, "genimage.cfg")
        with open(cfg, "w") as f:
            f.write(SMALL_DISK_GENIMAGE)
        root, g_out, g_tmp = (os.path.join(work, n) for n in ("root", "g-out", "g-tmp"))

        def fresh() -> None:
            shutil.rmtree(g_tmp, ignore_errors=True)
            os.makedirs(root, exist_ok=True)
            os.makedirs(g_out, exist_ok=True)

        disk.append(Command("genimage (same layout)",
                            ["genimage", "--config", cfg, "--rootpath", root, "--tmppath", g_tmp,
                             "--outputpath", g_out], (g_out, g_tmp), prepare=fresh))
    # What the libraries this path needs cost before imgkit runs a line of its own: the part
    # of the ratio no change inside imgkit can remove.
    disk.append(Command("python: import argparse, dataclasses, tomllib, construct",
                        [python, "-c", "import argparse, dataclasses, tomllib, construct"]))
    if installed is not editable:
        mine_e = os.path.join(work, "editable-out")
        disk.append(Command("imgkit build (editable checkout)",
                            editable + ["build", "-q", toml, "-O", mine_e], (mine_e,)))
    return version, disk, notes
