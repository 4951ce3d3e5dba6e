"""The POS side: card readers, PIN pad, QR, printer, display and voice, and an ISO 8583 client."""
