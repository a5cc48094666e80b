"""The built-in filesystem types, one module each, imported by :mod:`imgkit.filesystems` on first use."""
