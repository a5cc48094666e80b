"""Subcommands beyond archives: registered into :mod:`imgkit.cli` on import."""
from __future__ import annotations
