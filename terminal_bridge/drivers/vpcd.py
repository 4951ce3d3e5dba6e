"""Put a software card into a real PC/SC reader: a client of vsmartcard's ``vpcd``.

pcscd loads the vpcd driver (Debian ``vsmartcard-vpcd``), which shows readers
``Virtual PCD 00 00`` / ``00 01`` and waits on TCP 35963 / 35964 for a card.
:class:`VpcdCard` connects to it (127.0.0.1 only) and answers vpcd's frames
(2-byte big-endian length + payload; a 1-byte payload is control: ``00`` power
off, ``01`` power on, ``02`` reset, ``04`` send ATR; anything longer is a C-APDU)
with the card object's ``process``.  Runs in a daemon thread; ``stop()`` ends it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

from switch.logsafe import kv

from ..apdu import CardApplet

log = logging.getLogger(__name__)

VPCD_PORT = 35963  # first virtual reader; 35964 is the second


class VpcdCard:
    def __init__(self, card: CardApplet, host: str = "127.0.0.1", port: int = VPCD_PORT) -> None:
        self.card = card
        self.host, self.port = host, port
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.connected = threading.Event()
        self.apdus = 0

    def start(self, timeout: float = 10.0) -> VpcdCard:
        """Connect (retrying while vpcd starts up) and serve in the background."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._sock = socket.create_connection((self.host, self.port), timeout=1.0)
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise ConnectionError(f"vpcd not reachable on {self.host}:{self.port}: {exc}") from exc
                time.sleep(0.1)
        self._sock.settimeout(0.2)
        self.connected.set()
        self._thread = threading.Thread(target=self._serve, name=f"vpcd-card-{self.port}", daemon=True)
        self._thread.start()
        log.info("soft card inserted", extra=kv(vpcd=f"{self.host}:{self.port}"))
        return self

    def _recv_exact(self, n: int) -> bytes | None:
        assert self._sock is not None
        buf = b""
        while len(buf) < n:
            if self._stop.is_set():
                return None
            try:
                chunk = self._sock.recv(n - len(buf))
            except TimeoutError:
                continue
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            head = self._recv_exact(2)
            if head is None:
                break
            payload = self._recv_exact(int.from_bytes(head, "big"))
            if payload is None:
                break
            answer = self._handle(payload)
            if answer is not None:
                try:
                    self._sock.sendall(len(answer).to_bytes(2, "big") + answer)
                except OSError:
                    break
        self.connected.clear()

    def _handle(self, payload: bytes) -> bytes | None:
        if len(payload) == 1:
            ctl = payload[0]
            if ctl == 0x00:
                getattr(self.card, "power_off", lambda: None)()
            elif ctl in (0x01, 0x02):
                self.card.reset()
            elif ctl == 0x04:
                return self.card.atr()
            return None
        self.apdus += 1
        return self.card.process(payload)

    def stop(self) -> None:
        """Remove the card (closes the connection; pcscd sees the card go away)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
