"""``posswitch demo``: placeholder until the switch lands (issue 4 replaces it with the full demo)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    import _fastcore

    print(f"posswitch demo: core implementation {_fastcore.IMPLEMENTATION}; the full demo is not built yet")
    return 0
