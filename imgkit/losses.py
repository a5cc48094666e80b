"""What a format cannot hold of a tree, said once: one warning line per format and kind of
loss, naming the first few paths, so a tree with file capabilities or ACLs going to a format
without xattrs is never stripped silently, and a big tree does not flood the output."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imgkit.tree import Tree

#: How many paths (and xattr names) a warning names before "and N more".
SHOWN = 5


def xattr_loss(tree: Tree, fmt: str, why: str = "") -> list[str]:
    """The warning for writing ``tree`` as ``fmt``, which stores no xattrs (``why``: the
    reason, when it is not the format itself), or nothing when no entry has xattrs."""
    paths = [e.path for e in tree if e.xattrs]
    if not paths:
        return []
    names = sorted({key for e in tree if e.xattrs for key, _ in e.xattrs})
    shown = ", ".join("/" + p for p in paths[:SHOWN])
    more = f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else ""
    keys = ", ".join(names[:SHOWN]) + (", ..." if len(names) > SHOWN else "")
    reason = f" ({why})" if why else ""
    return [f"{fmt} cannot store extended attributes{reason}: {len(paths)} "
            f"{'entry loses its' if len(paths) == 1 else 'entries lose their'} xattrs "
            f"({keys}): {shown}{more}"]
