"""``python -m switch``: the same as ``posswitch serve``."""

import sys

from switch.cli import main

sys.exit(main(["serve", *sys.argv[1:]]))
