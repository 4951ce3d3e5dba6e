"""HSM simulator speaking payShield-style host commands over TCP (test keys only)."""
