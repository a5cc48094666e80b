"""PE section appending and UKIs, checked with binutils (objdump, objcopy)."""
from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess

import pytest

from imgkit.bootloaders import uki
from imgkit.errors import ImageError, InputError
from imgkit.formats import pe

STUB = uki.DEFAULT_STUB

pytestmark = [
    pytest.mark.skipif(not os.path.isfile(STUB), reason="systemd-boot-efi stub not installed"),
    pytest.mark.skipif(shutil.which("objdump") is None, reason="binutils not installed"),
]


# -- real-tool readers ------------------------------------------------------------------------
def objdump_h(path) -> dict[str, dict]:
    """Sections as objdump -h reports them: name -> size, vma, file offset."""
    out = subprocess.run(["objdump", "-h", str(path)], check=True, capture_output=True,
                         text=True).stdout
    assert "pei-x86-64" in out
    sections = {}
    for m in re.finditer(r"^\s*(\d+)\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+"
                         r"([0-9a-f]+)\s+2\*\*\d+\n\s+(.*)$", out, re.M):
        sections[m.group(2)] = dict(index=int(m.group(1)), size=int(m.group(3), 16),
                                    vma=int(m.group(4), 16), off=int(m.group(6), 16),
                                    flags=m.group(7))
    return sections


def objdump_p(path) -> dict[str, str]:
    out = subprocess.run(["objdump", "-p", str(path)], check=True, capture_output=True,
                         text=True).stdout
    fields = dict(re.findall(r"^(\w+)\s+([0-9a-fA-F]+)\b", out, re.M))
    fields["_text"] = out
    return fields


def objcopy_section(path, name, tmp_path) -> bytes:
    out = tmp_path / f"section{name}"
    subprocess.run(["objcopy", "-O", "binary", f"--only-section={name}", str(path), str(out)],
                   check=True, capture_output=True)
    return out.read_bytes()


# -- inputs -----------------------------------------------------------------------------------
def blob(path, size, seed):
    data = (bytes(range(seed, 256)) + bytes(range(seed))) * (size // 256 + 1)
    path.write_bytes(data[:size])
    return path


@pytest.fixture
def inputs(tmp_path):
    return dict(
        kernel=blob(tmp_path / "vmlinuz", 300_001, 7),
        initrd1=blob(tmp_path / "a.cpio.gz", 10_003, 1),
        initrd2=blob(tmp_path / "b.cpio.zst", 5_000, 2),
    )


def test_parser_matches_objdump_on_the_stub():
    image = pe.PEImage.read(STUB)
    ref = objdump_h(STUB)
    assert [s.name for s in image.sections] == sorted(ref, key=lambda n: ref[n]["index"])
    for s in image.sections:
        assert s.virtual_size == ref[s.name]["size"]
        assert s.virtual_address == ref[s.name]["vma"]
        assert s.raw_offset == ref[s.name]["off"]
    p = objdump_p(STUB)
    assert image.size_of_image == int(p["SizeOfImage"], 16)
    assert image.section_alignment == int(p["SectionAlignment"], 16)
    assert image.file_alignment == int(p["FileAlignment"], 16)
    # headers re-encode byte for byte
    raw = open(STUB, "rb").read()
    off = image.optional_offset
    assert pe.OptionalHeader.build(image.optional) == raw[off:off + 240]
    assert pe.CoffHeader.build(image.coff) == raw[off - 20:off]


def test_checksum_algorithm_matches_the_linker():
    """The stub's CheckSum was computed by the toolchain that linked it."""
    image = pe.PEImage.read(STUB)
    assert image.checksum != 0
    assert pe.pe_checksum(STUB) == image.checksum


def test_uki_sections_layout_and_contents(tmp_path, inputs):
    out = tmp_path / "uki.efi"
    cmdline = "console=ttyS0 panic=-1 root=PARTLABEL=root"
    uki.build_uki(out, kernel=inputs["kernel"], initrds=[inputs["initrd1"], inputs["initrd2"]],
                  cmdline=cmdline, uname="6.1.0-test")
    secs = objdump_h(out)
    new = [".osrel", ".cmdline", ".initrd", ".uname", ".linux"]
    stub_sections = objdump_h(STUB)
    assert sorted(secs, key=lambda n: secs[n]["index"]) == list(stub_sections) + new
    assert secs[".cmdline"]["size"] == len(cmdline)
    initrd_len = 10_003 + 1 + 5_000  # first initrd padded to 4 bytes
    assert secs[".initrd"]["size"] == initrd_len
    assert secs[".linux"]["size"] == 300_001
    assert "CODE" in secs[".linux"]["flags"] and "DATA" in secs[".osrel"]["flags"]

    p = objdump_p(out)
    sa, fa = int(p["SectionAlignment"], 16), int(p["FileAlignment"], 16)
    ordered = sorted(secs.values(), key=lambda s: s["vma"])
    for a, b in zip(ordered, ordered[1:], strict=False):
        assert a["vma"] + a["size"] <= b["vma"], "sections overlap in memory"
    files = sorted(secs.values(), key=lambda s: s["off"])
    for a, b in zip(files, files[1:], strict=False):
        assert a["off"] + a["size"] <= b["off"], "sections overlap in the file"
    for name in new:
        assert secs[name]["vma"] % sa == 0 and secs[name]["off"] % fa == 0
        assert secs[name]["vma"] >= max(s["vma"] + s["size"] for s in stub_sections.values())
    end = max(s["vma"] + s["size"] for s in secs.values())
    assert int(p["SizeOfImage"], 16) == -(-end // sa) * sa
    assert int(p["CheckSum"], 16) == 0
    assert int(p["SizeOfHeaders"], 16) <= min(s["off"] for s in secs.values())
    assert os.path.getsize(out) == secs[".linux"]["off"] + -(-300_001 // fa) * fa

    assert objcopy_section(out, ".cmdline", tmp_path) == cmdline.encode()
    assert objcopy_section(out, ".linux", tmp_path) == inputs["kernel"].read_bytes()
    assert objcopy_section(out, ".initrd", tmp_path) == (
        inputs["initrd1"].read_bytes() + b"\0" + inputs["initrd2"].read_bytes())
    assert objcopy_section(out, ".uname", tmp_path) == b"6.1.0-test"
    assert b"PRETTY_NAME=" in objcopy_section(out, ".osrel", tmp_path)
    # the stub's own code is untouched
    assert objcopy_section(out, ".text", tmp_path) == objcopy_section(STUB, ".text", tmp_path)
    # and our parser agrees with objdump on the result
    assert {s.name: s.virtual_address for s in pe.list_sections(out)} == \
        {n: s["vma"] for n, s in secs.items()}


def test_optional_sections_order_and_os_release(tmp_path, inputs):
    osrel = tmp_path / "os-release"
    osrel.write_text('ID=test\nPRETTY_NAME="Test"\n')
    dtb, splash = blob(tmp_path / "x.dtb", 100, 3), blob(tmp_path / "s.bmp", 200, 4)
    out = tmp_path / "uki.efi"
    uki.build_uki(out, kernel=inputs["kernel"], initrds=[inputs["initrd1"]], cmdline="quiet",
                  os_release=str(osrel), devicetree=dtb, splash=splash)
    secs = objdump_h(out)
    order = [n for n in sorted(secs, key=lambda n: secs[n]["index"]) if n in uki.SECTION_ORDER]
    assert order == [".osrel", ".cmdline", ".dtb", ".splash", ".initrd", ".linux"]
    assert objcopy_section(out, ".osrel", tmp_path) == osrel.read_bytes()
    assert objcopy_section(out, ".initrd", tmp_path) == inputs["initrd1"].read_bytes()
    uki.build_uki(out, kernel=inputs["kernel"], os_release="ID=x\n")
    assert objcopy_section(out, ".osrel", tmp_path) == b"ID=x\n"
    with pytest.raises(InputError, match="os-release"):
        uki.build_uki(out, kernel=inputs["kernel"], os_release=str(tmp_path / "missing"))


def test_checksum_option(tmp_path, inputs):
    out = tmp_path / "uki.efi"
    uki.build_uki(out, kernel=inputs["kernel"], cmdline="x", checksum=True)
    stored = int(objdump_p(out)["CheckSum"], 16)
    assert stored != 0 and stored == pe.pe_checksum(out)


def make_signed(src, dst):
    """A copy of ``src`` with an (empty) certificate table in the security directory."""
    data = bytearray(open(src, "rb").read())
    image = pe.PEImage.read(src)
    cert = struct.pack("<IHH", 8, 0x0200, 0x0002)  # WIN_CERTIFICATE header, no payload
    off = len(data)
    data += cert
    struct.pack_into("<II", data, image.optional_offset + 112 + 8 * pe.DIR_SECURITY, off, len(cert))
    dst.write_bytes(bytes(data))
    return off


def test_signed_stub_is_refused(tmp_path, inputs):
    signed = tmp_path / "signed.stub"
    make_signed(STUB, signed)
    assert "Security Directory" in objdump_p(signed)["_text"]
    assert re.search(r"Entry 4 0+[1-9a-f][0-9a-f]* 00000008 Security", objdump_p(signed)["_text"])
    out = tmp_path / "uki.efi"
    with pytest.raises(InputError, match="signed"):
        uki.build_uki(out, stub=signed, kernel=inputs["kernel"], cmdline="x")
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    # told to strip it: the certificate table goes, the directory entry is zeroed
    uki.build_uki(out, stub=signed, kernel=inputs["kernel"], cmdline="x", strip_signature=True)
    text = objdump_p(out)["_text"]
    assert re.search(r"Entry 4 0+ 00000000 Security", text)
    assert objcopy_section(out, ".cmdline", tmp_path) == b"x"


def test_many_sections_grow_the_headers(tmp_path):
    """More section headers than the header padding holds: section data is shifted."""
    stub = pe.PEImage.read(STUB)
    room = (stub.size_of_headers - stub.section_table_offset) // 40 - len(stub.sections)
    count = room + 3
    payloads = [bytes([i]) * (100 + i) for i in range(count)]
    out = tmp_path / "many.efi"
    with open(out, "w+b") as f:
        pe.add_sections(STUB, f, [pe.NewSection(f".s{i}", [p]) for i, p in enumerate(payloads)])
    secs = objdump_h(out)
    assert len(secs) == len(stub.sections) + count
    p = objdump_p(out)
    assert int(p["SizeOfHeaders"], 16) > stub.size_of_headers
    for name in [s.name for s in stub.sections]:
        assert objcopy_section(out, name, tmp_path) == objcopy_section(STUB, name, tmp_path)
    for i, payload in enumerate(payloads):
        assert objcopy_section(out, f".s{i}", tmp_path) == payload


def test_bad_inputs(tmp_path, inputs):
    out = tmp_path / "x.efi"
    with pytest.raises(InputError, match="already has"):
        with open(out, "w+b") as f:
            pe.add_sections(STUB, f, [pe.NewSection(".text", [b"x"])])
    with pytest.raises(InputError, match="section name"):
        pe.NewSection(".toolongname", [b""])
    notpe = tmp_path / "not.efi"
    notpe.write_bytes(b"\x7fELF" + bytes(100))
    with pytest.raises(ImageError, match="MZ"):
        pe.PEImage.read(notpe)
    with pytest.raises(InputError, match="kernel"):
        uki.build_uki(out, kernel=tmp_path / "nope")


def test_reproducible(tmp_path, inputs):
    outs = []
    for name in ("a.efi", "b.efi"):
        out = tmp_path / name
        uki.build_uki(out, kernel=inputs["kernel"], initrds=[inputs["initrd1"]], cmdline="x",
                      checksum=True)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
