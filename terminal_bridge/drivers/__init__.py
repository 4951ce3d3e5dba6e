"""Device drivers: the software EMV card, the vpcd bridge that puts it into pcscd, and friends."""
