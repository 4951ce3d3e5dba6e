"""Card-issuer and QR-wallet simulators that the switch forwards to (``docs/issuer.md``).

* :mod:`issuer_sim.accounts` — accounts file (TOML/JSON): cards, keys under the LMK, faults;
* :mod:`issuer_sim.ledger` — SQLite ledger of postings, idempotent reversals;
* :mod:`issuer_sim.host` — authorisation logic (PIN and ARQC through the HSM);
* :mod:`issuer_sim.faults` — latency, declines, dropped and late answers;
* :mod:`issuer_sim.server` — the H2H TCP server and ``start_issuer``;
* :mod:`issuer_sim.wallets` — QR wallets (pay, pending, query, cancel);
* :mod:`issuer_sim.cli` — ``posswitch issuer``.
"""
