"""GRUB: grub.cfg checked by grub-script-check, images by file(1), disks by sgdisk/sfdisk and
GRUB's own filesystem drivers (grub-fstest), patched boot fields by xxd against the layout in
GRUB's boot.h / diskboot.S, and real boots under SeaBIOS and OVMF (marked boot)."""
from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import sys

import pytest
from conftest import sh

from imgkit.bootloaders import grub
from imgkit.bootloaders import table as boot
from imgkit.build import build
from imgkit.config import load_config
from imgkit.errors import InputError, LayoutError

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
BOOT_IMG = "/usr/lib/grub/i386-pc/boot.img"

pytestmark = pytest.mark.skipif(not shutil.which("grub-mkimage"),
                                reason="GRUB (grub-common, grub-pc-bin, grub-efi-amd64-bin) missing")


def script_check(text: str) -> None:
    r = subprocess.run(["grub-script-check"], input=text.encode(), capture_output=True)
    assert r.returncode == 0, r.stderr.decode() + r.stdout.decode()


def xxd_bytes(path, offset: int, length: int) -> bytes:
    """Bytes read by xxd (not by our code)."""
    return bytes.fromhex(sh("xxd", "-p", "-s", str(offset), "-l", str(length), str(path))
                         .replace("\n", ""))


def fstest(image, *args: str) -> str:
    return sh("grub-fstest", str(image), *args)


# -- grub.cfg ---------------------------------------------------------------------------------
def test_generated_cfg_is_valid_grub_script_with_every_entry_kind():
    text = grub.grub_cfg([
        grub.GrubEntry("Linux", "/boot/vmlinuz", cmdline="console=ttyS0 panic=-1 x=$y",
                       initrds=["/boot/ucode", "/boot/initrd"]),
        grub.GrubEntry("GNU Mach", "/boot/gnumach.gz", "multiboot", "console=com0",
                       modules=[grub.GrubModule("/boot/ext2fs", "--host-priv-port=1 root=device:hd0")]),
        grub.GrubEntry("Xen", "/boot/xen.gz", "multiboot2", "console=com1",
                       modules=[grub.GrubModule("/boot/vmlinuz", "console=hvc0"),
                                grub.GrubModule("/boot/initrd")]),
    ], default=1, root=("label", "ESP"))
    script_check(text)
    lines = text.splitlines()
    assert lines[:5] == ["serial --unit=0 --speed=115200", "terminal_input serial",
                         "terminal_output serial", "set default=1", "set timeout=0"]
    assert "search --no-floppy --set=root --label ESP" in lines
    assert "    linux /boot/vmlinuz console=ttyS0 panic=-1 'x=$y'" in lines
    assert "    initrd /boot/ucode /boot/initrd" in lines
    assert "    multiboot /boot/gnumach.gz console=com0" in lines
    assert "    module /boot/ext2fs --host-priv-port=1 root=device:hd0" in lines
    assert "    multiboot2 /boot/xen.gz console=com1" in lines
    assert "    module2 /boot/vmlinuz console=hvc0" in lines


@pytest.mark.parametrize("kwargs,what", [
    ({"default": 2}, "default entry 2"),
    ({"entries": [grub.GrubEntry("it's", "/k")]}, "single quotes"),
    ({"entries": [grub.GrubEntry("x", "/k", "multiboot", initrds=["/i"])]}, "takes modules"),
    ({"entries": [grub.GrubEntry("x", "/k", "chain")]}, "kind 'chain'"),
    ({"entries": []}, "at least one"),
])
def test_bad_entries_are_refused(kwargs, what):
    args = {"entries": [grub.GrubEntry("Linux", "/k")], **kwargs}
    entries = args.pop("entries")
    with pytest.raises(InputError, match=what):
        grub.grub_cfg(entries, **args)


def test_tree_places_files_and_finds_its_filesystem_by_marker(tmp_path):
    (tmp_path / "vmlinuz").write_bytes(b"K" * 100)
    (tmp_path / "initrd").write_bytes(b"I" * 10)
    tree = grub.grub_tree([grub.HostEntry("L", str(tmp_path / "vmlinuz"), cmdline="quiet",
                                          initrds=[str(tmp_path / "initrd")])],
                          marker="imgkit-abc.id", mtime=7)
    assert {"boot/vmlinuz", "boot/initrd", "boot/grub/grub.cfg", "boot/grub/imgkit-abc.id"} <= \
        {e.path for e in tree}
    with tree["boot/grub/grub.cfg"].data.open() as f:
        text = f.read().decode()
    script_check(text)
    assert "search --no-floppy --set=root --file /boot/grub/imgkit-abc.id" in text
    assert all(e.mtime == 7 for e in tree if e.path)


def test_user_cfg_is_taken_as_is(tmp_path):
    cfg = tmp_path / "my.cfg"
    cfg.write_bytes(b"set timeout=5\nmenuentry x { halt }\n")
    tree = grub.grub_tree(config=str(cfg))
    with tree["boot/grub/grub.cfg"].data.open() as f:
        assert f.read() == cfg.read_bytes()
    with pytest.raises(InputError, match="not both"):
        grub.grub_tree([grub.HostEntry("L", str(cfg))], config=str(cfg))


# -- images -----------------------------------------------------------------------------------
def test_efi_image_is_a_reproducible_efi_application(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = grub.efi_image(str(tmp_path / "a"))
    b = grub.efi_image(str(tmp_path / "b"))
    assert "PE32+ executable (EFI application) x86-64" in sh("file", a)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read()


def test_boot_img_patched_only_where_grub_setup_patches(tmp_path):
    code = grub.boot_img(0x12345)
    out = tmp_path / "mbr"
    out.write_bytes(code)
    original = open(BOOT_IMG, "rb").read()[:440]
    assert xxd_bytes(out, 0x5C, 8) == struct.pack("<Q", 0x12345)
    assert xxd_bytes(out, 0x64, 1) == b"\xff"  # boot drive: as the BIOS says
    assert xxd_bytes(out, 0x66, 2) == b"\x90\x90"  # the floppy jmp nopped, like grub-setup
    assert xxd_bytes(BOOT_IMG, 0x66, 1) == b"\xeb"
    changed = [i for i in range(440) if code[i] != original[i]]
    assert set(changed) <= set(range(0x5C, 0x64)) | {0x66, 0x67}


def test_core_blocklist_points_after_its_first_sector(tmp_path):
    core = grub.mkimage("i386-pc", str(tmp_path / "core.img"), "(,gpt2)/boot/grub")
    size = os.path.getsize(core)
    sectors = -(-size // 512)
    placed = tmp_path / "placed"
    placed.write_bytes(grub.place_core(open(core, "rb").read(), 2048))
    assert os.path.getsize(placed) == sectors * 512
    # diskboot.S: the last 12 bytes of the first sector are start (u64), len, segment (u16).
    start, length, segment = struct.unpack("<QHH", xxd_bytes(placed, 0x1F4, 12))
    assert (start, length, segment) == (2049, sectors - 1, 0x820)
    # grub-mkimage itself wrote the length: only the start moved.
    assert struct.unpack("<QHH", xxd_bytes(core, 0x1F4, 12))[1:] == (sectors - 1, 0x820)


def test_registered_with_the_boot_path_table():
    path = boot.get("grub")
    assert path.on_disk and "grub" in boot.names(firmware="bios", on_disk=True)


# -- disks ------------------------------------------------------------------------------------
def build_example(tmp_path, name: str, *, edit=None) -> str:
    src = os.path.join(EXAMPLES, f"{name}.toml")
    text = open(src).read()
    if edit:
        text = edit(text)
    cfg_path = tmp_path / f"{name}.toml"
    cfg_path.write_text(text)
    build(load_config(str(cfg_path)), str(tmp_path / "out"), mtime=1700000000)
    images = [f for f in os.listdir(tmp_path / "out") if f.endswith(".img")]
    return str(tmp_path / "out" / images[0])


@pytest.fixture(scope="module")
def bios_uefi_disk(tmp_path_factory):
    return build_example(tmp_path_factory.mktemp("grub"), "grub-bios-uefi")


def test_gpt_disk_layout_seen_by_sgdisk_sfdisk_and_grub(bios_uefi_disk, tmp_path):
    image = bios_uefi_disk
    assert "No problems found" in sh("sgdisk", "-v", image)
    dump = sh("sfdisk", "--dump", image)
    assert "type=21686148-6449-6E6F-744E-656564454649" in dump
    bios_start = int(dump.split("img1 : start=")[1].split(",")[0])
    # boot.img points at the BIOS-boot partition; the core's block list at the sector after.
    assert xxd_bytes(image, 0x5C, 8) == struct.pack("<Q", bios_start)
    start, _, segment = struct.unpack("<QHH", xxd_bytes(image, bios_start * 512 + 0x1F4, 12))
    assert (start, segment) == (bios_start + 1, 0x820)
    # GRUB's own partition and FAT drivers see what it will read at boot.
    assert "grub.cfg" in fstest(image, "ls", "(loop0,gpt2)/boot/grub/")
    cfg = fstest(image, "cat", "(loop0,gpt2)/boot/grub/grub.cfg")
    script_check(cfg)
    assert "linux /boot/vmlinuz" in cfg and "initrd /boot/initramfs-main.cpio" in cfg
    assert "bootx64.efi" in fstest(image, "ls", "(loop0,gpt2)/EFI/BOOT/").lower()
    esp_start = int(dump.split("img2 : start=")[1].split(",")[0])
    esp_size = int(dump.split("img2 : start=")[1].split("size=")[1].split(",")[0])
    esp = tmp_path / "esp.img"
    sh("dd", f"if={image}", f"of={esp}", "bs=512", f"skip={esp_start}", f"count={esp_size}",
       "status=none")
    sh("fsck.vfat", "-n", str(esp))


def test_mbr_disk_core_in_the_gap(tmp_path):
    def to_mbr(text):
        return text.replace('bios = "grub"', 'bios = "grub"\ntable = "mbr"').replace(
            '  { name = "bios", type = "bios-boot", size = "1M" },\n', "").replace(
            'type = "esp"', 'type = "fat16"')
    image = build_example(tmp_path, "grub-bios-uefi", edit=to_mbr)
    assert "label: dos" in sh("sfdisk", "--dump", image)
    assert xxd_bytes(image, 0x5C, 8) == struct.pack("<Q", 1)
    start, _, segment = struct.unpack("<QHH", xxd_bytes(image, 512 + 0x1F4, 12))
    assert (start, segment) == (2, 0x820)
    assert "grub.cfg" in fstest(image, "ls", "(loop0,msdos1)/boot/grub/")


EXT4_ROOT = """
seed = "grub-ext4"

[trees.initrd]
init = "busybox"
rc = "echo 'grub from ext4 booted'; poweroff -f"

[initramfs.main]
tree = "initrd"
compress = "gzip"

[filesystems.root]
type = "ext4"
label = "root"
[filesystems.root.grub]
entries = [{ kernel = "kernel", initrd = ["initramfs:main"], cmdline = "console=ttyS0 panic=-1" }]
root = "label:root"

[disk]
output = "ext4.img"
table = "mbr"
bios = "grub"
partitions = [{ name = "root", type = "linux", size = "auto", filesystem = "root" }]
"""


@pytest.fixture(scope="module")
def ext4_mbr_disk(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ext4")
    (tmp / "ext4.toml").write_text(EXT4_ROOT)
    build(load_config(str(tmp / "ext4.toml")), str(tmp / "out"), mtime=1700000000)
    return str(tmp / "out" / "ext4.img")


def test_ext4_holder_on_mbr_read_by_grub_and_e2fsck(ext4_mbr_disk, tmp_path):
    image = ext4_mbr_disk
    cfg = fstest(image, "cat", "(loop0,msdos1)/boot/grub/grub.cfg")
    script_check(cfg)
    assert "search --no-floppy --set=root --label root" in cfg
    assert "vmlinuz" in fstest(image, "ls", "(loop0,msdos1)/boot/")
    start = int(sh("sfdisk", "--dump", image).split("img1 : start=")[1].split(",")[0])
    part = tmp_path / "root.img"
    sh("dd", f"if={image}", f"of={part}", "bs=512", f"skip={start}", "status=none")
    sh("e2fsck", "-fn", str(part))


def test_mbr_gap_too_small_says_how_big(tmp_path):
    def small_gap(text):
        return text.replace('bios = "grub"', 'bios = "grub"\ntable = "mbr"\nalignment = "32K"').replace(
            '  { name = "bios", type = "bios-boot", size = "1M" },\n', "").replace(
            'type = "esp"', 'type = "fat16"')
    with pytest.raises(LayoutError, match=r"needs \d+ sectors .* the gap has 63"):
        build_example(tmp_path, "grub-bios-uefi", edit=small_gap)


def test_gpt_without_bios_boot_partition_gets_one_after_the_declared_ones(tmp_path):
    def drop(text):
        return text.replace('  { name = "bios", type = "bios-boot", size = "1M" },\n', "")
    image = build_example(tmp_path, "grub-bios-uefi", edit=drop)
    assert "No problems found" in sh("sgdisk", "-v", image)
    dump = sh("sfdisk", "--dump", image)
    # The declared ESP keeps number 1; the BIOS-boot partition is added as number 2.
    assert "img1 : " in dump and "type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B" in \
        dump.split("img1 : ")[1].splitlines()[0]
    line = dump.split("img2 : ")[1].splitlines()[0]
    assert "type=21686148-6449-6E6F-744E-656564454649" in line and 'name="bios-boot"' in line
    bios_start = int(line.split("start=")[1].split(",")[0])
    assert xxd_bytes(image, 0x5C, 8) == struct.pack("<Q", bios_start)
    assert "grub.cfg" in fstest(image, "ls", "(loop0,gpt1)/boot/grub/")


def test_two_bios_boot_partitions_are_refused(tmp_path):
    def two(text):
        return text.replace('  { name = "bios", type = "bios-boot", size = "1M" },\n',
                            '  { name = "bios", type = "bios-boot", size = "1M" },\n'
                            '  { name = "bios2", type = "bios-boot", size = "1M" },\n')
    with pytest.raises(LayoutError, match="BIOS boot partition"):
        build_example(tmp_path, "grub-bios-uefi", edit=two)


def test_two_builds_are_bit_identical(tmp_path, bios_uefi_disk):
    again = build_example(tmp_path, "grub-bios-uefi")
    digest = [hashlib.file_digest(open(p, "rb"), "sha256").hexdigest()
              for p in (bios_uefi_disk, again)]
    assert digest[0] == digest[1]


# -- a hybrid ISO ---------------------------------------------------------------------------------
def xorriso_report(iso: str, what: str) -> str:
    return sh("xorriso", "-indev", iso, f"-report_{what}", "plain")


def build_iso(tmp_path, *, edit=None) -> str:
    text = open(os.path.join(EXAMPLES, "grub-iso.toml")).read()
    (tmp_path / "grub-iso.toml").write_text(edit(text) if edit else text)
    build(load_config(str(tmp_path / "grub-iso.toml")), str(tmp_path / "out"), mtime=1700000000)
    return str(tmp_path / "out" / "grub.iso")


@pytest.fixture(scope="module")
def grub_iso(tmp_path_factory):
    return build_iso(tmp_path_factory.mktemp("grub-iso"))


def test_iso_el_torito_entries_seen_by_xorriso(grub_iso):
    report = xorriso_report(grub_iso, "el_torito")
    boot = [line.split() for line in report.splitlines() if line.startswith("El Torito boot img")]
    assert [(b[5], b[6], b[7]) for b in boot] == [("1", "BIOS", "y"), ("2", "UEFI", "y")]
    assert "1  /boot/grub/i386-pc/eltorito.img" in report
    assert "2  /boot/grub/efi.img" in report
    # xorriso checks the boot info table and the --grub2-boot-info patch itself.
    assert "El Torito img opts :   1  boot-info-table grub2-boot-info" in report


def test_iso_system_area_is_grubs_hybrid_mbr(grub_iso):
    report = xorriso_report(grub_iso, "system_area")
    assert "System area summary: MBR grub2-mbr" in report
    assert "MBR partition path :   2  /boot/grub/efi.img" in report
    dump = sh("sfdisk", "--dump", grub_iso)
    assert "type=ef" in dump and "bootable" in dump
    assert os.path.getsize(grub_iso) % (1 << 20) == 0
    # boot_hybrid.img at 0x1b0 and the core's first block list (xorrisofs(1) --grub2-mbr and
    # --grub2-boot-info): the BIOS image's 2 KiB block * 4, + 4 and + 5.
    lba = int([line.split()[-1] for line in xorriso_report(grub_iso, "el_torito").splitlines()
               if line.startswith("El Torito boot img :   1")][0])
    assert xxd_bytes(grub_iso, 0x1B0, 8) == struct.pack("<Q", lba * 4 + 4)
    assert xxd_bytes(grub_iso, lba * 2048 + 2548, 8) == struct.pack("<Q", lba * 4 + 5)
    hybrid = open("/usr/lib/grub/i386-pc/boot_hybrid.img", "rb").read()
    assert xxd_bytes(grub_iso, 0, 0x1B0) == hybrid[:0x1B0]


def test_iso_grub_cfg_and_efi_image_read_by_other_tools(grub_iso, tmp_path):
    for path in ("/boot/grub/grub.cfg", "/boot/grub/efi.img"):
        sh("xorriso", "-osirrox", "on", "-indev", grub_iso, "-extract", path,
           str(tmp_path / os.path.basename(path)))
    cfg = (tmp_path / "grub.cfg").read_text()
    script_check(cfg)
    assert "initrd /boot/initramfs-main.cpio" in cfg and "imgkit.via=grub-iso" in cfg
    sh("fsck.vfat", "-n", str(tmp_path / "efi.img"))
    listing = sh("mdir", "-i", str(tmp_path / "efi.img"), "-b", "::/EFI/BOOT")
    assert "BOOTX64.EFI" in listing.upper()
    # GRUB's own iso9660 driver, through the disk view of the hybrid.
    assert "grub.cfg" in fstest(grub_iso, "ls", "(loop0)/boot/grub/")


def test_iso_two_builds_are_bit_identical(grub_iso, tmp_path):
    again = build_iso(tmp_path)
    digest = [hashlib.file_digest(open(p, "rb"), "sha256").hexdigest() for p in (grub_iso, again)]
    assert digest[0] == digest[1]


def test_iso_bios_entry_refuses_efi_true(tmp_path):
    with pytest.raises(InputError, match=r"\[iso\] efi"):
        build_iso(tmp_path, edit=lambda t: t.replace('bios = { loader = "grub", ',
                                                     'bios = { loader = "grub", efi = true, '))


def test_iso_with_only_the_uefi_grub_entry_carries_its_grub_cfg(tmp_path):
    def efi_only(text):
        bios = [line for line in text.splitlines() if line.startswith("bios = ")][0]
        return text.replace(bios + "\n", "").replace(
            'efi = "grub_efi"', bios.replace("bios = ", "efi = ").replace('"grub"', '"grub_efi"'))
    iso = build_iso(tmp_path, edit=efi_only)
    report = xorriso_report(iso, "el_torito")
    assert "UEFI" in report and "BIOS" not in report
    sh("xorriso", "-osirrox", "on", "-indev", iso, "-extract", "/boot/grub/grub.cfg",
       str(tmp_path / "grub.cfg"))
    script_check((tmp_path / "grub.cfg").read_text())


@pytest.mark.boot
@pytest.mark.parametrize("firmware,media", [("bios", "cdrom"), ("uefi", "cdrom"),
                                            ("bios", "disk"), ("uefi", "disk")])
def test_hybrid_iso_boots_as_cd_and_as_disk(grub_iso, firmware, media):
    run_expect(grub_iso, firmware, "imgkit example: grub iso booted",
               extra=["--iso-as-disk"] if media == "disk" else [])


# -- GNU Mach through a multiboot entry ------------------------------------------------------------
GNUMACH_PACKAGE = "gnumach-image-1.8-486"


def fetch_package(package: str) -> str:
    """A Debian package fetched with apt-get download and unpacked with dpkg -x into the imgkit
    cache, as the Debian kernel is (no root): the unpacked root."""
    from imgkit.vm.kernel import cache_lock, cache_root, writable_cache_subdir
    where = writable_cache_subdir(cache_root(), "packages")
    final = os.path.join(where, package)
    with cache_lock(os.path.join(where, f".{package}.lock")):
        if not os.path.exists(os.path.join(final, ".complete")):
            work = os.path.join(where, f".{package}.work")
            shutil.rmtree(work, ignore_errors=True)
            os.makedirs(work)
            try:
                subprocess.run(["apt-get", "download", "-q", package], cwd=work,
                               check=True, capture_output=True, timeout=300)
            except (OSError, subprocess.SubprocessError) as exc:
                pytest.skip(f"cannot fetch {package}: {exc}")
            deb = [f for f in os.listdir(work) if f.endswith(".deb")][0]
            subprocess.run(["dpkg", "-x", os.path.join(work, deb), os.path.join(work, "root")],
                           check=True)
            open(os.path.join(work, "root", ".complete"), "w").close()
            shutil.rmtree(final, ignore_errors=True)
            os.rename(os.path.join(work, "root"), final)
            shutil.rmtree(work, ignore_errors=True)
    return final


def fetch_gnumach() -> str:
    """Debian's GNU Mach image (a gzipped 64-bit multiboot ELF)."""
    final = fetch_package(GNUMACH_PACKAGE)
    images = [f for f in os.listdir(os.path.join(final, "boot")) if f.startswith("gnumach")]
    return os.path.join(final, "boot", images[0])


GNUMACH_CONFIG = """
seed = "grub-gnumach"

[filesystems.boot]
type = "vfat"
label = "BOOT"

[filesystems.boot.grub]
entries = [{{ title = "GNU Mach", type = "multiboot", kernel = "{kernel}", cmdline = "console=com0" }}]

[disk]
output = "gnumach.img"
bios = "grub"
partitions = [
  {{ name = "bios", type = "bios-boot", size = "1M" }},
  {{ name = "boot", type = "linux", size = "auto", filesystem = "boot" }},
]
"""


@pytest.fixture(scope="module")
def gnumach_disk(tmp_path_factory):
    kernel = fetch_gnumach()
    tmp = tmp_path_factory.mktemp("gnumach")
    (tmp / "gnumach.toml").write_text(GNUMACH_CONFIG.format(kernel=kernel))
    build(load_config(str(tmp / "gnumach.toml")), str(tmp / "out"), mtime=1700000000)
    return str(tmp / "out" / "gnumach.img"), kernel


def test_gnumach_is_a_multiboot_kernel_grub_will_load(gnumach_disk, tmp_path):
    image, kernel = gnumach_disk
    elf = tmp_path / "gnumach"
    with __import__("gzip").open(kernel) as src:
        elf.write_bytes(src.read())
    assert subprocess.run(["grub-file", "--is-x86-multiboot", str(elf)]).returncode == 0
    cfg = fstest(image, "cat", "(loop0,gpt2)/boot/grub/grub.cfg")
    script_check(cfg)
    assert "multiboot /boot/gnumach-1.8-486.gz console=com0" in cfg


# -- real boots ---------------------------------------------------------------------------------
def run_expect(image: str, firmware: str, expect: str, timeout: int = 60, extra=()):
    r = subprocess.run([sys.executable, "-m", "imgkit", "run", image, "--firmware", firmware,
                        "--expect", expect, "--timeout", str(timeout), "--quiet", "--snapshot",
                        *extra], capture_output=True, text=True)
    assert r.returncode == 0, f"boot failed:\n{r.stderr[-4000:]}"


@pytest.mark.boot
@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_one_gpt_disk_boots_linux_under_both_firmwares(bios_uefi_disk, firmware):
    run_expect(bios_uefi_disk, firmware, "imgkit example: grub booted")


@pytest.mark.boot
def test_mbr_disk_with_ext4_boots_under_seabios(ext4_mbr_disk):
    run_expect(ext4_mbr_disk, "bios", "grub from ext4 booted", timeout=60)


@pytest.mark.boot
def test_gnumach_boots_through_a_grub_multiboot_entry(gnumach_disk):
    # After the banner GNU Mach panics: no Hurd servers are in Debian's amd64 archive.
    run_expect(gnumach_disk[0], "bios", "GNU Mach 1.8", timeout=60)


# -- imgkit run --kernel: multiboot kernels -----------------------------------------------------
def multiboot_file(path, kind: str, *, elf_class: int = 2) -> str:
    """A file with a valid multiboot (v1 or v2) header 64 bytes in, after an ELF ident."""
    head = b"\x7fELF" + bytes([elf_class]) + bytes(59)
    if kind == "multiboot":
        magic, flags = 0x1BADB002, 0x00010003
        header = struct.pack("<III", magic, flags, (-(magic + flags)) & 0xFFFFFFFF)
    else:
        magic, arch, length = 0xE85250D6, 0, 24
        header = struct.pack("<IIII", magic, arch, length, (-(magic + arch + length)) & 0xFFFFFFFF)
        header += struct.pack("<HHI", 0, 0, 8)  # the end tag
    path.write_bytes(head + header + bytes(4096))
    return str(path)


@pytest.mark.parametrize("kind,flag", [("multiboot", "--is-x86-multiboot"),
                                       ("multiboot2", "--is-x86-multiboot2")])
def test_multiboot_headers_found_where_grub_file_finds_them(tmp_path, kind, flag):
    from imgkit.vm.runimage import multiboot_kind
    path = multiboot_file(tmp_path / "k", kind)
    assert subprocess.run(["grub-file", flag, path]).returncode == 0
    assert multiboot_kind(path) == kind
    (tmp_path / "plain").write_bytes(b"\x7fELF" + bytes(8192))
    assert subprocess.run(["grub-file", flag, str(tmp_path / "plain")]).returncode != 0
    assert multiboot_kind(str(tmp_path / "plain")) is None


def imgkit_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imgkit", "run", *args], capture_output=True,
                          text=True)


def test_32bit_multiboot_kernel_goes_to_qemus_own_loader(tmp_path):
    kernel = multiboot_file(tmp_path / "k32", "multiboot", elf_class=1)
    (tmp_path / "m1").write_bytes(b"x")
    r = imgkit_run("--kernel", kernel, "--module", f"{tmp_path}/m1 a=1 b", "--append", "c=2",
                   "--print-cmdline")
    assert r.returncode == 0, r.stderr
    argv = __import__("shlex").split(r.stdout)
    assert argv[argv.index("-kernel") + 1] == kernel
    assert argv[argv.index("-initrd") + 1] == f"{tmp_path}/m1 a=1 b"
    assert argv[argv.index("-append") + 1] == "c=2"


def test_64bit_multiboot_kernel_is_wrapped_in_a_grub_disk(tmp_path):
    from imgkit.vm.runimage import multiboot_spec
    kernel = fetch_gnumach()
    (tmp_path / "ext2fs").write_bytes(b"module")
    work = tmp_path / "work"
    work.mkdir()
    spec = multiboot_spec(kernel, [f"{tmp_path}/ext2fs --host-priv-port=1 root=device:hd0"],
                          append="console=com0", firmware=None, workdir=str(work))
    assert spec is not None and spec.kernel is None and spec.firmware == "bios"
    disk = spec.drives[0].file
    dump = sh("sfdisk", "--dump", disk)
    assert "label: dos" in dump and "bootable" in dump
    assert xxd_bytes(disk, 0x5C, 8) == struct.pack("<Q", 1)  # the core in the MBR gap
    cfg = fstest(disk, "cat", "(loop0,msdos1)/boot/grub/grub.cfg")
    script_check(cfg)
    assert "    multiboot /boot/gnumach-1.8-486.gz console=com0" in cfg
    assert "    module /boot/ext2fs --host-priv-port=1 root=device:hd0" in cfg


def test_module_for_a_kernel_without_multiboot_header_is_refused(tmp_path):
    (tmp_path / "k").write_bytes(b"\x7fELF" + bytes(8192))
    (tmp_path / "m").write_bytes(b"m")
    r = imgkit_run("--kernel", str(tmp_path / "k"), "--module", str(tmp_path / "m"),
                   "--print-cmdline")
    assert r.returncode != 0 and "no multiboot" in r.stderr


@pytest.mark.boot
def test_gnumach_boots_through_imgkit_run_kernel():
    r = imgkit_run("--kernel", fetch_gnumach(), "--append", "console=com0", "--expect",
                   "GNU Mach 1.8", "--timeout", "60", "--quiet")
    assert r.returncode == 0, f"boot failed:\n{r.stderr[-4000:]}"


# -- inspect: multiboot kernels, GRUB's boot.img and core.img as Debian's grub-pc-bin ships them --
CORE_MODULES = ("biosdisk", "part_msdos", "part_gpt", "fat", "normal")


def inspect_json(path: str) -> dict:
    return __import__("json").loads(sh(sys.executable, "-m", "imgkit", "inspect", "--json", path))


def inspect_text(path: str) -> str:
    return sh(sys.executable, "-m", "imgkit", "inspect", path)


def debian_core(tmp_path, prefix: str) -> str:
    """A core image made by grub-mkimage itself (not through imgkit)."""
    out = str(tmp_path / "core.img")
    subprocess.run(["grub-mkimage", "-O", "i386-pc", "-o", out, "-p", prefix, *CORE_MODULES],
                   check=True)
    return out


def test_debian_gnumach_inspected_as_a_gzipped_64bit_multiboot_kernel(tmp_path):
    kernel = fetch_gnumach()
    elf = tmp_path / "gnumach"
    elf.write_bytes(subprocess.run(["gzip", "-dc", kernel], check=True,
                                   capture_output=True).stdout)
    assert subprocess.run(["grub-file", "--is-x86-multiboot", str(elf)]).returncode == 0
    assert sh("file", "-b", str(elf)).startswith("ELF 64-bit")
    # the header's offset and flags as grep and xxd find them in the gunzipped kernel
    at = int(sh("grep", "-obUaP", r"\x02\xb0\xad\x1b", str(elf)).split(":")[0])
    flags = struct.unpack("<I", xxd_bytes(elf, at + 4, 4))[0]
    d = inspect_json(kernel)
    assert d["format"] == "multiboot"
    assert d["multiboot"]["offset"] == at and d["multiboot"]["flags"] == f"{flags:#x}"
    assert d["multiboot"]["elf"] == "ELF64" and d["multiboot"]["compression"] == "gzip"
    assert f"Kernel: multiboot kernel, ELF64, gzip-compressed, flags {flags:#x}" in \
        inspect_text(kernel)
    assert "multiboot kernel, ELF64, flags" in inspect_text(str(elf))


def test_multiboot2_header_inspected_with_its_tags(tmp_path):
    path = multiboot_file(tmp_path / "k2", "multiboot2")
    assert subprocess.run(["grub-file", "--is-x86-multiboot2", path]).returncode == 0
    d = inspect_json(path)
    assert d["format"] == "multiboot2" and d["multiboot"]["offset"] == 64
    assert d["multiboot"]["architecture"] == 0 and d["multiboot"]["tags"] == []


def test_debian_boot_img_and_core_img_in_the_mbr_gap(tmp_path):
    """boot.img and core.img exactly as grub-pc-bin ships them and grub-mkimage makes them:
    boot.img's default kernel sector (1) and diskboot's default block list (from sector 2)
    are an MBR-gap install, as grub-bios-setup writes it."""
    disk = str(tmp_path / "disk.img")
    subprocess.run(["truncate", "-s", "8M", disk], check=True)
    subprocess.run(["sfdisk", "-q", disk], input=b"label: dos\nstart=2048, type=83\n", check=True)
    core = debian_core(tmp_path, "(,msdos1)/boot/grub")
    subprocess.run(["dd", f"if={BOOT_IMG}", f"of={disk}", "bs=440", "count=1", "conv=notrunc",
                    "status=none"], check=True)
    subprocess.run(["dd", f"if={core}", f"of={disk}", "bs=512", "seek=1", "conv=notrunc",
                    "status=none"], check=True)
    lba = struct.unpack("<Q", xxd_bytes(disk, 0x5C, 8))[0]
    start, length, segment = struct.unpack("<QHH", xxd_bytes(disk, 512 + 500, 12))
    assert (lba, start) == (1, 2)
    d = inspect_json(disk)
    assert d["format"] == "mbr" and d["table"]["partitions"][0]["start_lba"] == 2048
    assert d["boot_code"]["loader"] == "GRUB i386-pc boot.img"
    assert d["boot_code"]["core_lba"] == lba
    found = d["boot_code"]["core"]
    assert found["blocklist"] == {"start_lba": start, "sectors": length,
                                  "segment": f"{segment:#x}"}
    assert found["prefix"] == "(,msdos1)/boot/grub"
    text = inspect_text(disk)
    assert "Boot code: GRUB i386-pc boot.img, core image at sector 1" in text
    assert "prefix (,msdos1)/boot/grub" in text


def test_debian_core_img_in_a_bios_boot_partition(tmp_path):
    """grub-mkimage's core placed in a GPT BIOS-boot partition made by sgdisk, the two fields
    grub-bios-setup patches (boot.img's kernel sector, the first block list) set by dd."""
    disk = str(tmp_path / "disk.img")
    subprocess.run(["truncate", "-s", "8M", disk], check=True)
    sh("sgdisk", "-n", "1:2048:4095", "-t", "1:EF02", "-n", "2:4096:0", "-t", "2:8300", disk)
    core = debian_core(tmp_path, "(,gpt2)/boot/grub")
    sectors = -(-os.path.getsize(core) // 512)

    def poke(offset: int, data: bytes) -> None:
        subprocess.run(["dd", f"of={disk}", "bs=1", f"seek={offset}", "conv=notrunc",
                        "status=none"], input=data, check=True)

    subprocess.run(["dd", f"if={BOOT_IMG}", f"of={disk}", "bs=440", "count=1", "conv=notrunc",
                    "status=none"], check=True)
    subprocess.run(["dd", f"if={core}", f"of={disk}", "bs=512", "seek=2048", "conv=notrunc",
                    "status=none"], check=True)
    poke(0x5C, struct.pack("<Q", 2048))
    poke(2048 * 512 + 500, struct.pack("<Q", 2049))
    d = inspect_json(disk)
    assert d["boot_code"]["core_lba"] == 2048
    assert d["boot_code"]["core"]["prefix"] == "(,gpt2)/boot/grub"
    part = d["table"]["partitions"][0]
    assert part["type"] == grub.BIOS_BOOT_GUID
    assert part["filesystem"]["format"] == "grub-core"
    assert part["filesystem"]["blocklist"]["start_lba"] == 2049
    assert part["filesystem"]["blocklist"]["sectors"] == sectors - 1
    assert part["filesystem"]["prefix"] == "(,gpt2)/boot/grub"


def test_debian_core_and_boot_img_files_inspected_alone(tmp_path):
    core = debian_core(tmp_path, "/boot/grub")
    d = inspect_json(core)
    assert d["format"] == "grub-core" and d["grub_core"]["prefix"] == "/boot/grub"
    assert inspect_json(BOOT_IMG)["boot_code"]["loader"] == "GRUB i386-pc boot.img"


def test_imgkit_grub_disk_inspected_like_grubs_own(bios_uefi_disk):
    d = inspect_json(bios_uefi_disk)
    bios = d["table"]["partitions"][0]
    lba = struct.unpack("<Q", xxd_bytes(bios_uefi_disk, 0x5C, 8))[0]
    assert d["boot_code"]["core_lba"] == lba == bios["start_lba"]
    assert bios["filesystem"]["prefix"] == "(,gpt2)/boot/grub"


def test_ls_of_the_grub_esp_shows_grub_cfg(bios_uefi_disk):
    listing = sh(sys.executable, "-m", "imgkit", "ls", f"{bios_uefi_disk}:esp")
    assert "/boot/grub/grub.cfg" in listing and "/EFI/BOOT/BOOTX64.EFI" in listing
    # the same files as GRUB's own FAT driver lists
    assert "grub.cfg" in fstest(bios_uefi_disk, "ls", "(loop0,gpt2)/boot/grub/")


def test_positional_multiboot_kernel_boots_like_kernel(tmp_path):
    k32 = multiboot_file(tmp_path / "k32", "multiboot", elf_class=1)
    r = imgkit_run(k32, "--append", "c=2", "--print-cmdline")
    assert r.returncode == 0, r.stderr
    argv = __import__("shlex").split(r.stdout)
    assert argv[argv.index("-kernel") + 1] == k32
    r = imgkit_run(fetch_gnumach(), "--append", "console=com0", "--print-cmdline")
    assert r.returncode == 0, r.stderr
    assert "-kernel" not in r.stdout and "through GRUB" in r.stderr


# -- Xen: dom0 as PVH under TCG -------------------------------------------------------------------
XEN_PACKAGE = "xen-hypervisor-4.17-amd64"
#: Under TCG a PV dom0 crashes early; a PVH dom0 needs an IOMMU (QEMU's intel-iommu on q35), and
#: RDTSCP hidden: QEMU's SVM gives Xen no next-RIP, and Xen's fallback decoder expects RDTSC
#: where the kernel executes RDTSCP ("SVM Insn len emulation failed"), crashing dom0.
XEN_QEMU_ARGS = "-machine q35 -device intel-iommu,intremap=on -cpu max,-rdtscp"
XEN_CMDLINE = ("console=com1 com1=115200,8n1 dom0_mem=384M dom0=pvh iommu=1 noreboot")


def fetch_xen() -> str:
    boot = os.path.join(fetch_package(XEN_PACKAGE), "boot")
    return os.path.join(boot, next(f for f in os.listdir(boot) if f.endswith(".gz")))


def test_debian_xen_inspected_as_a_gzipped_multiboot_kernel():
    xen = fetch_xen()
    elf = subprocess.run(["gzip", "-dc", xen], check=True, capture_output=True).stdout
    assert elf[:5] == b"\x7fELF\x01"   # Xen's multiboot loader entry is a 32-bit ELF
    assert "Kernel: multiboot kernel, ELF32, gzip-compressed" in inspect_text(xen)


@pytest.mark.boot
@pytest.mark.slow
def test_xen_boots_a_pvh_dom0_to_its_init(tmp_path):
    from imgkit.vm.kernel import fetch_debian_kernel
    dom0 = fetch_debian_kernel(os.environ.get("IMGKIT_CACHE")).vmlinuz
    rc = tmp_path / "rc"
    rc.write_text('echo "dom0 init: $(uname -r)"\npoweroff -f\n')
    initrd = str(tmp_path / "init.cpio.gz")
    sh(sys.executable, "-m", "imgkit", "initramfs", "--init", "busybox", "--rc", str(rc),
       "-o", initrd)
    r = imgkit_run(fetch_xen(), "--module", f"{dom0} console=hvc0 panic=-1", "--module", initrd,
                   "--append", XEN_CMDLINE, "--mem", "1024", "--qemu-arg", XEN_QEMU_ARGS,
                   "--expect", "dom0 init:", "--timeout", "240", "--quiet")
    assert r.returncode == 0, f"boot failed:\n{r.stderr[-4000:]}"
