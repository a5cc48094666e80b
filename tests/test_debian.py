"""A real Debian bookworm root, from debootstrap, built by imgkit and booted to ``login:``.

The root is made once by ``debootstrap`` (as root: it chroots and runs maintainer scripts)
and cached as a tar in ``$IMGKIT_CACHE`` keyed by its package list, so the unprivileged run
of the suite and later runs reuse it. Everything after that runs as whoever runs the test:
imgkit builds a GPT disk from the tar (a UKI with the tree's own kernel on an ESP, syslinux
on the same ESP for BIOS, an ext4 root), the ext4 is compared path by path with the tar (GNU
tar's listing, Python's tarfile for xattrs) through ``debugfs``, and the disk boots under OVMF
(raw) and SeaBIOS (qcow2).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

SUITE = "bookworm"
PACKAGES = ("systemd-sysv", "udev", "linux-image-amd64", "kmod", "iproute2", "passwd",
            "iputils-ping")


def debian_mirror() -> str:
    """The Debian mirror apt uses here (the first ``URIs:`` of debian.sources)."""
    for path in ("/etc/apt/sources.list.d/debian.sources",):
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.startswith("URIs:"):
                        return line.split()[1]
        except OSError:
            pass
    return "http://deb.debian.org/debian"


def cached_root_tar() -> str:
    """Where the tar of the root for :data:`PACKAGES` is cached."""
    cache = os.environ.get("IMGKIT_CACHE", "/tmp/imgkit-cache")
    key = hashlib.sha256("\n".join((SUITE, "minbase", *sorted(PACKAGES))).encode()).hexdigest()[:16]
    return os.path.join(cache, "debian-roots", f"{SUITE}-minbase-{key}.tar")


def make_root_tar() -> str:
    """The cached root tar, made with debootstrap when missing (root only, else a skip)."""
    tar = cached_root_tar()
    if os.path.exists(tar):
        return tar
    if os.getuid() != 0:
        pytest.skip("privilege: debootstrap needs root and no cached root tar exists "
                    f"({tar}); run the suite as root once")
    if shutil.which("debootstrap") is None:
        raise AssertionError("debootstrap is missing (packages.txt lists it)")
    os.makedirs(os.path.dirname(tar), exist_ok=True)
    os.chmod(os.path.dirname(tar), 0o755)
    work = tempfile.mkdtemp(prefix="debootstrap-", dir=os.path.dirname(tar))
    try:
        root = os.path.join(work, "root")
        r = subprocess.run(["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES),
                            SUITE, root, debian_mirror()], capture_output=True, text=True)
        assert r.returncode == 0, f"debootstrap failed:\n{r.stdout[-3000:]}{r.stderr[-2000:]}"
        part = os.path.join(work, "root.tar")
        subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls",
                        "-S", "-cpf", part, "."], cwd=root, check=True)
        os.chmod(part, 0o644)   # the unprivileged run reads it too
        os.replace(part, tar)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tar


def cached_oci_layout(tar: str) -> str:
    """An OCI image layout of the root tar, tagged ``debian``, made by umoci (``raw add-layer``
    stores the tar verbatim as one gzip layer) and cached beside the tar; a run that cannot
    write the cache makes its own copy in a temporary directory."""
    done = tar.removesuffix(".tar") + "-oci"
    if os.path.isdir(done):
        return done
    parent = os.path.dirname(tar)
    if not os.access(parent, os.W_OK):
        parent = tempfile.mkdtemp(prefix="debian-oci-")
        done = os.path.join(parent, "oci")
    work = tempfile.mkdtemp(prefix="umoci-", dir=parent)
    try:
        layout = os.path.join(work, "oci")
        for argv in (["init", "--layout", layout], ["new", "--image", f"{layout}:base"],
                     ["raw", "add-layer", "--image", f"{layout}:base", "--tag", "debian", tar]):
            subprocess.run(["umoci", *argv], check=True, capture_output=True)
        subprocess.run(["chmod", "-R", "a+rX", layout], check=True)
        os.replace(layout, done)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return done


# -- the fidelity check: the tar (GNU tar's listing) against the ext4 image (debugfs) --------
_TAR_LINE = re.compile(r"^(?P<mode>[-dlhcbps][-rwxsStT]{9})\s+(?P<uid>\d+)/(?P<gid>\d+)\s+"
                       r"(?P<size>\d+|\d+,\d+)\s+\d{4}-\d\d-\d\d \d\d:\d\d (?P<name>.*)$")
_TYPES = {"-": 0o100000, "h": 0o100000, "d": 0o040000, "l": 0o120000, "c": 0o020000,
          "b": 0o060000, "p": 0o010000, "s": 0o140000}


def _unescape(name: str) -> str:
    """GNU tar's 'escape' quoting of names (backslash, octal bytes) undone."""
    def one(m: re.Match) -> str:
        text = m[1]
        return {"\\": "\\", "n": "\n", "t": "\t"}.get(text) or chr(int(text, 8))
    return re.sub(r"\\(\\|n|t|[0-7]{3})", one, name)


def _perm(text: str) -> int:
    """``rwsr-xr-x`` -> 0o4755."""
    bits = 0
    for i, (c, special) in enumerate(zip(text, "..s..s..t", strict=True)):
        if c not in "-ST":
            bits |= 1 << (8 - i)
        if c in "sStT" and special in "st":
            bits |= {2: 0o4000, 5: 0o2000, 8: 0o1000}[i]
    return bits


def tar_listing(tar: str) -> dict[str, dict]:
    """path -> mode, uid, gid, size, target, rdev, hardlink, from ``tar -tv``."""
    out = subprocess.run(["tar", "--numeric-owner", "-tvf", tar], capture_output=True,
                         text=True, check=True, env={**os.environ, "LC_ALL": "C"}).stdout
    entries: dict[str, dict] = {}
    for line in out.splitlines():
        m = _TAR_LINE.match(line)
        assert m, f"unparsed tar listing line: {line!r}"
        name, target, hardlink = m["name"], None, None
        if m["mode"][0] == "l":
            name, target = name.split(" -> ", 1)
        elif m["mode"][0] == "h":
            name, hardlink = name.split(" link to ", 1)
            hardlink = _unescape(hardlink).removeprefix("./")
        name = _unescape(name).removeprefix("./").rstrip("/")
        size, rdev = (0, tuple(map(int, m["size"].split(",")))) if "," in m["size"] else \
            (int(m["size"]), None)
        entries[name] = {"mode": _TYPES[m["mode"][0]] | _perm(m["mode"][1:]),
                         "uid": int(m["uid"]), "gid": int(m["gid"]), "size": size,
                         "target": _unescape(target) if target else None, "rdev": rdev,
                         "hardlink": hardlink}
    return entries


def _debugfs(image: str, commands: list[str]) -> dict[str, str]:
    """Each command's output from one ``debugfs -f`` run (read-only)."""
    with tempfile.NamedTemporaryFile("w", suffix=".cmds") as f:
        f.write("".join(c + "\n" for c in commands))
        f.flush()
        out = subprocess.run(["debugfs", "-f", f.name, image], capture_output=True, text=True,
                             check=True, errors="surrogateescape").stdout
    results: dict[str, str] = {}
    for chunk in out.split("debugfs: ")[1:]:
        cmd, _, body = chunk.partition("\n")
        results[cmd] = body
    return results


def _q(path: str) -> str:
    return '"/' + path + '"'


def image_differences(tar: str, image: str) -> list[str]:
    """Every difference between the tar's paths and the ext4 image (``IMG?offset=N``): type,
    permissions, owner, size, symlink target, device numbers, hard-link groups."""
    want = tar_listing(tar)
    dirs = [p for p, e in want.items() if e["mode"] & 0o170000 == 0o040000]
    listed = _debugfs(image, [f"ls -p {_q(d)}" for d in dirs])
    have: dict[str, dict] = {}
    for d in dirs:
        for line in listed.get(f"ls -p {_q(d)}", "").splitlines():
            parts = line.split("/")
            if len(parts) < 7 or parts[5] in (".", ".."):
                continue
            path = f"{d}/{parts[5]}" if d else parts[5]
            have[path] = {"ino": int(parts[1]), "mode": int(parts[2], 8), "uid": int(parts[3]),
                          "gid": int(parts[4]), "size": int(parts[6] or 0)}
    special = [p for p, e in want.items() if e["target"] is not None or e["rdev"] is not None]
    stats = _debugfs(image, [f"stat {_q(p)}" for p in special])
    diffs = []
    for path, e in want.items():
        if not path:
            continue
        h = have.get(path)
        if h is None:
            diffs.append(f"{path}: missing from the image")
            continue
        primary = want[e["hardlink"]] if e["hardlink"] else e
        for key in ("mode", "uid", "gid"):
            expected = e[key] if key != "mode" or not e["hardlink"] else primary["mode"]
            if h[key] != expected:
                diffs.append(f"{path}: {key} {h[key]:o} in the image, {expected:o} in the tar")
        if primary["mode"] & 0o170000 == 0o100000 and h["size"] != primary["size"]:
            diffs.append(f"{path}: size {h['size']} in the image, {primary['size']} in the tar")
        if e["hardlink"] and have.get(e["hardlink"], {}).get("ino") != h["ino"]:
            diffs.append(f"{path}: not a hard link to {e['hardlink']} in the image")
        body = stats.get(f"stat {_q(path)}", "")
        if e["target"] is not None:
            m = re.search(r'link dest: "(.*)"', body)
            if not m or m[1] != e["target"]:
                diffs.append(f"{path}: link target {m[1] if m else None!r} in the image, "
                             f"{e['target']!r} in the tar")
        if e["rdev"] is not None:
            m = re.search(r"Device major/minor number: (\d+):(\d+)", body)
            got = (int(m[1]), int(m[2])) if m else None
            if got != e["rdev"]:
                diffs.append(f"{path}: device {got} in the image, {e['rdev']} in the tar")
    extra = sorted(set(have) - set(want))
    diffs += [f"{p}: in the image, not in the tar" for p in extra
              if not p.startswith(("lost+found", "etc/systemd/system/", "usr/local/sbin/"))]
    return diffs


def tar_xattr(tar: str, path: str, name: str) -> bytes | None:
    """An xattr as GNU tar stored it (a ``SCHILY.xattr.NAME`` pax record), read by Python's
    tarfile, not by imgkit."""
    import tarfile
    with tarfile.open(tar) as t:
        for member in t:
            if member.name.removeprefix("./") == path:
                value = member.pax_headers.get(f"SCHILY.xattr.{name}")
                return value.encode("utf-8", "surrogateescape") if value is not None else None
    return None


def image_xattr(image: str, path: str, name: str) -> bytes | None:
    body = _debugfs(image, [f"ea_list {_q(path)}"]).get(f"ea_list {_q(path)}", "")
    m = re.search(rf"^\s*{re.escape(name)} \(\d+\) = ((?:[0-9a-f]{{2}} ?)+)$", body, re.M)
    return bytes.fromhex(m[1].replace(" ", "")) if m else None


# -- the tests -------------------------------------------------------------------------------
EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


def _imgkit(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "imgkit", *args], capture_output=True, text=True,
                       timeout=timeout, errors="replace",
                       env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"})
    assert r.returncode == 0, f"imgkit {' '.join(args)} failed:\n{r.stderr[-4000:]}\n{r.stdout[-4000:]}"
    return r


def _example_work(tmp_path_factory, name: str):
    """The cached root tar and a directory holding it as root.tar beside examples/debian/."""
    tar = make_root_tar()
    work = tmp_path_factory.mktemp(name)
    shutil.copytree(os.path.join(EXAMPLES, "debian"), work / "debian")
    os.symlink(tar, work / "root.tar")
    return tar, work


@pytest.fixture(scope="module")
def debian_images(tmp_path_factory):
    """examples/debian.toml built from the cached root tar, as a raw disk and as a qcow2."""
    tar, work = _example_work(tmp_path_factory, "debian")
    with open(os.path.join(EXAMPLES, "debian.toml"), encoding="utf-8") as f:
        text = f.read()
    (work / "raw.toml").write_text(text)
    (work / "qcow2.toml").write_text(text.replace('output = "debian.img"',
                                                  'output = "debian.qcow2"\nformat = "qcow2"'))
    r = _imgkit("build", str(work / "raw.toml"), "-O", str(work / "out"))
    assert re.search(r"kernel: \S+ from tree rootfs", r.stderr), r.stderr
    _imgkit("build", str(work / "qcow2.toml"), "-O", str(work / "out"), "-q")
    qcow2 = str(work / "out" / "debian.qcow2")
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", qcow2],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format"] == "qcow2", info
    return tar, str(work / "out" / "debian.img"), qcow2


@pytest.fixture(scope="module")
def debian_oci_image(tmp_path_factory):
    """examples/debian.toml with the root taken from an OCI image of the root tar
    (``oci:DIR:debian``) instead of the tar itself, as a raw disk."""
    tar, work = _example_work(tmp_path_factory, "debian-oci")
    os.symlink(cached_oci_layout(tar), work / "debian-oci")
    with open(os.path.join(EXAMPLES, "debian.toml"), encoding="utf-8") as f:
        text = f.read()
    assert 'sources = ["root.tar"]' in text
    (work / "oci.toml").write_text(text.replace('sources = ["root.tar"]',
                                                'sources = ["oci:debian-oci:debian"]'))
    r = _imgkit("build", str(work / "oci.toml"), "-O", str(work / "out"))
    assert re.search(r"kernel: \S+ from tree rootfs", r.stderr), r.stderr
    return tar, str(work / "out" / "debian.img")


def _root_partition(image: str) -> str:
    """The ext4 root of a raw disk as debugfs opens it (``IMG?offset=BYTES``), from sfdisk."""
    table = json.loads(subprocess.run(["sfdisk", "-J", image], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    root = next(p for p in table["partitions"] if p.get("name") == "root")
    return f"{image}?offset={root['start'] * table.get('sectorsize', 512)}"


def test_example_config_takes_the_kernel_from_the_root():
    from imgkit.config import load_config
    cfg = load_config(os.path.join(EXAMPLES, "debian.toml"))
    assert (cfg.kernel.source, cfg.kernel.tree) == ("tree", "rootfs")
    assert all(os.path.exists(src) for _, src in cfg.trees["rootfs"].files)


@pytest.mark.boot
@pytest.mark.slow
def test_debian_root_is_intact_in_the_image(debian_images):
    tar, raw, _ = debian_images
    fs = _root_partition(raw)
    fsck = subprocess.run(["e2fsck", "-fn", fs], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert image_differences(tar, fs) == []
    cap = tar_xattr(tar, "usr/bin/ping", "security.capability")
    assert cap, "debootstrap's ping has no security.capability in the tar"
    assert image_xattr(fs, "usr/bin/ping", "security.capability") == cap


def check_report(console: str) -> None:
    """What the check unit printed before login: no failed unit, ping's capability kept."""
    report = dict(re.findall(r"^imgkit-check: ([\w-]+)=(.*)$", console, re.M))
    assert report.get("done") == "yes", f"no boot report before login:\n{console[-3000:]}"
    assert report["failed-units"] == "0", f"failed units:\n{console[-3000:]}"
    assert "cap_net_raw" in report["ping-caps"], report
    assert report["ping-as-nobody"] == "1 received", report


@pytest.mark.boot
@pytest.mark.slow
@pytest.mark.parametrize("firmware,which", [("uefi", 1), ("bios", 2)], ids=["ovmf-raw", "seabios-qcow2"])
def test_debian_boots_to_login(debian_images, firmware, which):
    image = debian_images[which]
    r = _imgkit("run", image, "--firmware", firmware, "--snapshot", "--expect", "login:",
                "--timeout", "240", timeout=300)
    check_report(r.stdout)


@pytest.fixture(scope="module")
def debian_grub_image(tmp_path_factory):
    """examples/debian-grub.toml (GRUB for BIOS, a GPT disk) built from the cached root tar."""
    _, work = _example_work(tmp_path_factory, "debian-grub")
    shutil.copy(os.path.join(EXAMPLES, "debian-grub.toml"), work / "debian-grub.toml")
    _imgkit("build", str(work / "debian-grub.toml"), "-O", str(work / "out"), "-q")
    return str(work / "out" / "debian-grub.img")


@pytest.mark.boot
@pytest.mark.slow
def test_debian_boots_to_login_with_grub_under_seabios(debian_grub_image):
    cfg = subprocess.run(["grub-fstest", debian_grub_image, "cat", "(loop0,gpt2)/boot/grub/grub.cfg"],
                         capture_output=True, text=True, check=True).stdout
    assert "console=ttyS0 root=PARTLABEL=root rw rootwait panic=-1" in cfg, cfg
    r = _imgkit("run", debian_grub_image, "--firmware", "bios", "--snapshot", "--expect", "login:",
                "--timeout", "240", timeout=300)
    check_report(r.stdout)


def test_grub_example_config_boots_the_trees_kernel_with_the_declared_cmdline():
    from imgkit.config import load_config
    cfg = load_config(os.path.join(EXAMPLES, "debian-grub.toml"))
    assert (cfg.kernel.source, cfg.kernel.tree) == ("tree", "rootfs")
    assert cfg.disk.bios == "grub" and "root=PARTLABEL=root" in cfg.cmdline


@pytest.mark.boot
@pytest.mark.slow
def test_debian_root_from_an_oci_image_is_the_tars_root(debian_oci_image):
    """The ext4 built from the OCI image holds exactly what the tar holds (GNU tar's listing
    against debugfs), ping's capability included."""
    tar, raw = debian_oci_image
    fs = _root_partition(raw)
    fsck = subprocess.run(["e2fsck", "-fn", fs], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert image_differences(tar, fs) == []
    assert image_xattr(fs, "usr/bin/ping", "security.capability") == \
        tar_xattr(tar, "usr/bin/ping", "security.capability")


@pytest.mark.boot
@pytest.mark.slow
def test_debian_from_an_oci_image_boots_to_login(debian_oci_image):
    _, raw = debian_oci_image
    r = _imgkit("run", raw, "--firmware", "bios", "--snapshot", "--expect", "login:",
                "--timeout", "420", timeout=480)
    check_report(r.stdout)
