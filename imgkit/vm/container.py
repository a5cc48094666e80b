"""A container image as the root of ``imgkit virt --image oci:DIR[:TAG]`` (or an OCI or
``docker save`` archive): the image's layers become a throwaway ext4 root, and its config
gives what a container runtime would: the default command (``Entrypoint`` then ``Cmd``), the
environment (``Env``) and, for that default command, the working directory (``WorkingDir``).

The ext4 image is written below the run's scratch directory (:mod:`imgkit.scratch`) and goes
with it; the container image itself is only read (every blob's digest checked by
:mod:`imgkit.sources.oci`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from imgkit.errors import InputError


@dataclass(frozen=True)
class ContainerRoot:
    """The ext4 root made of an image, and the image config's defaults."""

    image: str
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    working_dir: str


def is_container_image(ref: str) -> bool:
    """Whether ``ref`` names a container image (``oci:``, ``oci-archive:``,
    ``docker-archive:``) rather than a disk or filesystem image file."""
    from imgkit.sources.oci import parse_image_source
    return parse_image_source(ref) is not None


def container_root(ref: str, directory: str) -> ContainerRoot:
    """Unpack the image ``ref`` into an ext4 image under ``directory``; its config's defaults.

    Raises :class:`InputError`/:class:`ImageError` for an image that cannot be read."""
    from imgkit.assemble import TreeSpec, assemble
    from imgkit.formats.ext4 import estimate_size, write_ext4

    tree = assemble(TreeSpec(sources=(ref,)))
    config = tree.image_config
    if config is None:   # pragma: no cover - every image source sets it
        raise InputError(f"{ref}: the image has no config")
    path = os.path.join(directory, "container-root.ext4")
    write_ext4(tree, path, size=estimate_size(tree) + (64 << 20), label="container")
    env = tuple(config.environment.items())
    return ContainerRoot(path, tuple(config.command), env, config.working_dir)
