"""imgkit: a rootless disk and boot image assembler.

Trees of files (from directories, archives or gen_init_cpio lists) become initramfs archives,
tarballs, FAT/ext4/ISO filesystems, partitioned disks and bootable images without root, loop
devices or mounts. See :mod:`imgkit.build` for the config-driven driver.
"""
__version__ = "0.1.0"
