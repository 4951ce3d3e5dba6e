"""Transaction processing: one module per flow family (financial, refund, reversal, settlement, QR, security)."""
