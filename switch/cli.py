"""The ``posswitch`` console command.

Each subcommand lives in the package that owns it and exposes
``main(argv: list[str] | None) -> int``; this module only dispatches, importing
the owner lazily so ``posswitch hsm`` does not import the switch.
"""

from __future__ import annotations

import importlib
import sys

#: subcommand -> (module with main(argv), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("switch.serve", "run the switch (terminal listener, issuer links, metrics)"),
    "demo": ("switch.demo", "run HSM + issuers + switch + terminals on loopback with live traffic"),
    "hsm": ("hsm_sim.cli", "run the HSM simulator"),
    "issuer": ("issuer_sim.cli", "run the card-issuer / QR-wallet simulator"),
    "terminal": ("terminal_bridge.cli", "run a POS terminal (interactive or scripted)"),
    "terminals": ("switch.admin", "manage the merchant/terminal registry"),
    "reconcile": ("switch.reconcile", "compare the journal with an issuer ledger"),
}


def usage() -> str:
    lines = ["usage: posswitch COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "`posswitch COMMAND --help` shows the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"posswitch: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name = COMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(f"posswitch: command {name!r} is not available in this build", file=sys.stderr)
        return 2
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
