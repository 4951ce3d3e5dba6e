"""``python -m issuer_sim``: the same as ``posswitch issuer``."""

import sys

from switch.cli import main

sys.exit(main(["issuer", *sys.argv[1:]]))
