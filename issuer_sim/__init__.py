"""Card-issuer and QR-wallet simulators that the switch forwards to."""
