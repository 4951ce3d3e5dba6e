"""posswitch's switch: the uvloop TCP server POS terminals connect to.

Framing, sign-on and working keys, MAC checks, PIN translation through the HSM,
routing to issuers and QR wallets, request/response matching, reversals, the
transaction journal, settlement and Prometheus metrics.
"""
