"""``python -m l2bg.search …``: the ``l2bg search`` command on its own."""

import sys

from l2bg.cli import main

sys.exit(main(["search", *sys.argv[1:]]))
