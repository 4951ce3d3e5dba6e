"""``python -m terminal_bridge``: the same as ``posswitch terminal``."""

import sys

from switch.cli import main

sys.exit(main(["terminal", *sys.argv[1:]]))
