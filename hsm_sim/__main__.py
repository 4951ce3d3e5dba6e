"""``python -m hsm_sim``: the same as ``posswitch hsm``."""

import sys

from switch.cli import main

sys.exit(main(["hsm", *sys.argv[1:]]))
