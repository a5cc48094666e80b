"""dm-verity: the hash tree against veritysetup (bit-identical, verify passes, a flipped byte
fails), and disks with verity, hash and signature partitions checked by veritysetup, sfdisk,
objdump and openssl."""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest
from conftest import sh

from imgkit.formats.verity import VerityParams, read_superblock, write_hash_tree

VERITYSETUP = shutil.which("veritysetup", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
pytestmark = pytest.mark.skipif(VERITYSETUP is None, reason="cryptsetup-bin is not installed")

UUID = uuid.UUID("0b8e3f4e-5d36-4b8a-9c53-7f7c2a1d9e01")


def veritysetup(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    assert VERITYSETUP
    return subprocess.run([VERITYSETUP, *argv], capture_output=True, text=True, check=check)


def dump(hash_path: str) -> dict[str, str]:
    out = veritysetup("dump", hash_path).stdout
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())
            if v}


def reference(tmp_path, data: str, salt: bytes) -> tuple[bytes, str]:
    """veritysetup's hash device for ``data`` and its root hash."""
    path = str(tmp_path / "theirs.hash")
    out = veritysetup("format", data, path, f"--salt={salt.hex() or '-'}", f"--uuid={UUID}",
                      "--data-block-size=4096", "--hash-block-size=4096").stdout
    root = next(line.split(":", 1)[1].strip() for line in out.splitlines()
                if line.startswith("Root hash"))
    with open(path, "rb") as f:
        return f.read(), root


def flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


# One block, one hash block, two levels, three levels (129 * 128 blocks), a partial last block.
@pytest.mark.parametrize("size", [4096, 128 * 4096, 129 * 4096, 129 * 128 * 4096, 5 * 4096 + 100])
@pytest.mark.parametrize("salt", [bytes(range(32)), b"", b"\xab" * 256])
def test_hash_device_is_bit_identical_to_veritysetup(tmp_path, size, salt):
    data = str(tmp_path / "data.img")
    with open(data, "wb") as f:
        f.write(os.urandom(size))
    ours = str(tmp_path / "ours.hash")
    tree = write_hash_tree(data, ours, VerityParams(salt=salt, uuid=UUID))
    if size % 4096:                      # veritysetup hashes whole blocks only
        os.truncate(data, -(-size // 4096) * 4096)
    theirs, root = reference(tmp_path, data, salt)
    with open(ours, "rb") as f:
        assert f.read() == theirs
    assert tree.root_hash_hex == root
    assert tree.hash_size == len(theirs)
    info = dump(ours)
    assert info["UUID"] == str(UUID) and info["Salt"] == (salt.hex() or "-")
    assert int(info["Data blocks"]) == tree.data_blocks == -(-size // 4096)
    veritysetup("verify", data, ours, root)


def test_sparse_data_and_corruption(tmp_path):
    data = str(tmp_path / "data.img")
    with open(data, "wb") as f:          # data, a 3 MiB hole, data, a trailing hole
        f.write(os.urandom(10_000))
        f.seek(3 << 20)
        f.write(os.urandom(8192))
        f.truncate(5 << 20)
    ours = str(tmp_path / "ours.hash")
    tree = write_hash_tree(data, ours, VerityParams(salt=b"salt", uuid=UUID))
    theirs, root = reference(tmp_path, data, b"salt")
    with open(ours, "rb") as f:
        assert f.read() == theirs
    veritysetup("verify", data, ours, tree.root_hash_hex)
    flip(data, (3 << 20) + 4097)
    bad = veritysetup("verify", data, ours, tree.root_hash_hex, check=False)
    assert bad.returncode != 0
    assert f"Verification failed at position {(3 << 20) + 4096}." in bad.stderr


def test_superblock_read_back_and_partition_uuids(tmp_path):
    data = str(tmp_path / "data.img")
    with open(data, "wb") as f:
        f.write(os.urandom(3 * 4096))
    ours = str(tmp_path / "ours.hash")
    tree = write_hash_tree(data, ours, VerityParams(salt=b"\x01\x02", uuid=UUID))
    theirs = str(tmp_path / "theirs.hash")
    veritysetup("format", data, theirs, "--salt=0102", f"--uuid={UUID}")
    with open(theirs, "rb") as f:
        sb = read_superblock(f)
    assert sb == {"format": "verity", "uuid": str(UUID), "hash_type": 1, "algorithm": "sha256",
                  "data_block_size": 4096, "hash_block_size": 4096, "data_blocks": 3,
                  "salt": "0102"}
    assert tree.data_uuid.bytes + tree.hash_uuid.bytes == tree.root_hash


def test_empty_data_is_refused(tmp_path):
    from imgkit.errors import InputError
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        write_hash_tree(str(tmp_path / "empty"), str(tmp_path / "h"),
                        VerityParams(salt=b"", uuid=UUID))


# -- disks ------------------------------------------------------------------------------------

def build(tmp_path, text: str, *extra: str) -> subprocess.CompletedProcess:
    cfg = tmp_path / "image.toml"
    cfg.write_text(text)
    return subprocess.run([sys.executable, "-m", "imgkit", "build", str(cfg), "-O",
                           str(tmp_path / "out"), *extra], capture_output=True, text=True)


TREE = """
seed = "verity-test"
[trees.root]
entries = ["dir /etc 0755 0 0", "dir /sbin 0755 0 0"]
files = { "/etc/hello" = "hello.txt" }
"""


def verity_disk(fs_type: str, extra_parts: str = "", uki: str = "") -> str:
    return TREE + f"""
[filesystems.root]
type = "{fs_type}"
tree = "root"
{uki}
[disk]
output = "disk.img"
partitions = [
  {{ name = "root", type = "root-x86-64", filesystem = "root" }},
  {{ name = "root-verity", type = "root-x86-64-verity", verity = "root" }},
{extra_parts}]
"""


def partitions(image: str) -> dict[str, dict]:
    table = json.loads(sh("sfdisk", "--json", image))["partitiontable"]
    return {p["name"]: p for p in table["partitions"]}


def extract(image: str, part: dict, dest: str, size: int | None = None) -> str:
    with open(image, "rb") as f, open(dest, "wb") as out:
        f.seek(part["start"] * 512)
        out.write(f.read(size if size is not None else part["size"] * 512))
    return dest


@pytest.fixture
def hello(tmp_path):
    (tmp_path / "hello.txt").write_text("hello\n")


@pytest.mark.parametrize("fs_type", ["squashfs", "ext4"])
def test_disk_verity_partitions_verify_with_veritysetup(tmp_path, hello, fs_type):
    if fs_type == "squashfs" and not shutil.which("mksquashfs"):
        pytest.skip("squashfs-tools is not installed")
    r = build(tmp_path, verity_disk(fs_type), "--json")
    assert r.returncode == 0, r.stderr
    image = str(tmp_path / "out" / "disk.img")
    parts = partitions(image)
    reported = json.loads(r.stdout)["outputs"][0]["verity_root_hashes"]
    assert parts["root-verity"]["type"] == "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5"
    hash_dev = extract(image, parts["root-verity"], str(tmp_path / "hash"))
    info = dump(hash_dev)
    data_size = int(info["Data blocks"]) * 4096
    data = extract(image, parts["root"], str(tmp_path / "data"), data_size)
    # The root hash is the one the partition UUIDs carry (systemd-repart's convention).
    root_hash = (uuid.UUID(parts["root"]["uuid"]).bytes
                 + uuid.UUID(parts["root-verity"]["uuid"]).bytes).hex()
    assert reported == {"root": root_hash}
    veritysetup("verify", data, hash_dev, root_hash)
    # Open the data from the whole partition (as the kernel would) and the image file itself.
    veritysetup("verify", extract(image, parts["root"], str(tmp_path / "whole")), hash_dev,
                root_hash)
    flip(data, data_size // 2 + 7)
    bad = veritysetup("verify", data, hash_dev, root_hash, check=False)
    assert bad.returncode != 0
    # The same seed gives the same salt, UUID and root hash.
    first = open(image, "rb").read()
    shutil.rmtree(tmp_path / "out")
    assert build(tmp_path, verity_disk(fs_type)).returncode == 0
    assert open(image, "rb").read() == first


def test_root_hash_in_the_uki_command_line(tmp_path, hello):
    (tmp_path / "vmlinuz").write_bytes(b"MZ" + bytes(4094))
    uki = """
[uki.main]
kernel = "vmlinuz"
cmdline = "console=ttyS0 roothash=${verity:root} systemd.verity_root_data=PARTLABEL=root"
output = "main.efi"
"""
    r = build(tmp_path, verity_disk("ext4", uki=uki))
    assert r.returncode == 0, r.stderr
    image = str(tmp_path / "out" / "disk.img")
    parts = partitions(image)
    root_hash = (uuid.UUID(parts["root"]["uuid"]).bytes
                 + uuid.UUID(parts["root-verity"]["uuid"]).bytes).hex()
    cmdline = sh("objcopy", "-O", "binary", "--only-section=.cmdline",
                 str(tmp_path / "out" / "main.efi"), "/dev/stdout")
    assert cmdline.rstrip("\0") == ("console=ttyS0 roothash=" + root_hash
                                    + " systemd.verity_root_data=PARTLABEL=root")


@pytest.mark.parametrize("cmdline, message", [
    ("roothash=${verity:nope}", "names no partition that a verity partition protects"),
    ("roothash=${verty:root}", "unknown substitution"),
    ("roothash=${root}", "unknown substitution"),
])
def test_unknown_substitutions_are_errors(tmp_path, hello, cmdline, message):
    uki = f'[uki.main]\nkernel = "vmlinuz"\ncmdline = "{cmdline}"\noutput = "main.efi"\n'
    r = build(tmp_path, verity_disk("ext4", uki=uki))
    assert r.returncode != 0 and message in r.stderr, r.stderr


@pytest.mark.parametrize("parts, message", [
    ('{ name = "v2", verity = "root" },', "already has the verity partition"),
    ('{ name = "v2", verity = "ghost" },', "names no other partition"),
    ('{ name = "v2", verity = "v2" },', "names no other partition"),
    ('{ name = "sig", verity_signature = "root" },', "needs verity_key and verity_certificate"),
    ('{ name = "sig", verity_signature = "root-verity", verity_key = "k", '
     'verity_certificate = "c" },', "names no partition that a verity partition protects"),
    ('{ name = "x", size = "1M", verity_key = "k" },', "go with verity_signature"),
    ('{ name = "sig", type = "usr-x86-64-verity-sig", verity_signature = "root", '
     'verity_key = "k", verity_certificate = "c" },',
     'does not go with partition \'root\' of type \'root-x86-64\''),
])
def test_bad_verity_partitions_are_refused(tmp_path, hello, parts, message):
    r = build(tmp_path, verity_disk("ext4", extra_parts=parts))
    assert r.returncode != 0 and message in r.stderr, r.stderr


def test_signature_partition(tmp_path, hello):
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
       str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem"), "-days", "3650",
       "-subj", "/CN=imgkit test")
    sig = ('  { name = "root-verity-sig", type = "root-x86-64-verity-sig", '
           'verity_signature = "root", verity_key = "key.pem", verity_certificate = "cert.pem" },\n')
    r = build(tmp_path, verity_disk("ext4", extra_parts=sig))
    assert r.returncode == 0, r.stderr
    image = str(tmp_path / "out" / "disk.img")
    parts = partitions(image)
    assert parts["root-verity-sig"]["type"] == "41092B05-9FC8-4523-994F-2DEF0408B176"
    raw = open(extract(image, parts["root-verity-sig"], str(tmp_path / "sig")), "rb").read()
    doc = json.loads(raw.rstrip(b"\0"))
    root_hash = (uuid.UUID(parts["root"]["uuid"]).bytes
                 + uuid.UUID(parts["root-verity"]["uuid"]).bytes).hex()
    assert doc["rootHash"] == root_hash
    fingerprint = sh("openssl", "x509", "-in", str(tmp_path / "cert.pem"), "-noout",
                     "-fingerprint", "-sha256").split("=", 1)[1].strip()
    assert doc["certificateFingerprint"] == fingerprint.replace(":", "").lower()
    (tmp_path / "p7s").write_bytes(base64.b64decode(doc["signature"]))
    (tmp_path / "content").write_text(root_hash)
    sh("openssl", "smime", "-verify", "-binary", "-inform", "der", "-in", str(tmp_path / "p7s"),
       "-content", str(tmp_path / "content"), "-certfile", str(tmp_path / "cert.pem"),
       "-nointern", "-CAfile", str(tmp_path / "cert.pem"), "-purpose", "any", "-out", "/dev/null")
    (tmp_path / "content").write_text(root_hash[:-1] + ("0" if root_hash[-1] != "0" else "1"))
    bad = subprocess.run(["openssl", "smime", "-verify", "-binary", "-inform", "der", "-in",
                          str(tmp_path / "p7s"), "-content", str(tmp_path / "content"),
                          "-certfile", str(tmp_path / "cert.pem"), "-nointern", "-CAfile",
                          str(tmp_path / "cert.pem"), "-purpose", "any", "-out", "/dev/null"],
                         capture_output=True)
    assert bad.returncode != 0


def test_prebuilt_image_on_mbr_and_gpt_with_given_guid(tmp_path):
    """A prebuilt image that is not a whole number of blocks: the tree covers its last block
    zero-padded, which is what the partition holds after it."""
    (tmp_path / "data.bin").write_bytes(os.urandom(3 * 4096 + 1000))
    guid = "5b3c6f3e-25a1-4f10-9a4e-1f2d3c4b5a69"
    for table, extra in (("gpt", f', guid = "{guid}"'), ("mbr", "")):
        r = build(tmp_path, f"""
[disk]
output = "{table}.img"
table = "{table}"
partitions = [
  {{ name = "data", type = "linux", image = "data.bin"{extra} }},
  {{ name = "hash", type = "linux", verity = "data" }},
]
""")
        assert r.returncode == 0, r.stderr
        image = str(tmp_path / "out" / f"{table}.img")
        table_json = json.loads(sh("sfdisk", "--json", image))["partitiontable"]["partitions"]
        data_part, hash_part = table_json
        hash_dev = extract(image, hash_part, str(tmp_path / "hash"))
        data = extract(image, data_part, str(tmp_path / "data"))
        theirs = str(tmp_path / "theirs.hash")
        info = dump(hash_dev)
        assert int(info["Data blocks"]) == 4
        padded = str(tmp_path / "padded")
        with open(padded, "wb") as f:
            f.write((tmp_path / "data.bin").read_bytes().ljust(4 * 4096, b"\0"))
        out = veritysetup("format", padded, theirs, f"--salt={info['Salt']}",
                          f"--uuid={info['UUID']}").stdout
        root = next(line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.startswith("Root hash"))
        ours = open(hash_dev, "rb").read()     # the whole partition: the tree, then zeros
        reference_tree = open(theirs, "rb").read()
        assert ours[:len(reference_tree)] == reference_tree
        assert not ours[len(reference_tree):].strip(b"\0")
        veritysetup("verify", data, hash_dev, root)
        if table == "gpt":
            assert data_part["uuid"].lower() == guid
            assert uuid.UUID(hash_part["uuid"]).bytes == bytes.fromhex(root)[16:]


def test_hash_partition_type_must_match_a_discoverable_root(tmp_path, hello):
    r = build(tmp_path, verity_disk("ext4").replace('type = "root-x86-64-verity"',
                                                     'type = "linux"'))
    assert r.returncode != 0 and 'give it type = "root-verity-x86-64"' in r.stderr, r.stderr
