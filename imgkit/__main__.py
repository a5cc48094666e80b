"""``python -m imgkit``: the same as the ``imgkit`` command."""
import sys

from imgkit.cli import main

sys.exit(main())
