"""The ceiling: a bare uvloop TCP forwarder that relays bytes between clients and one target, no decoding.

``bench/bench_switch.py`` points the load generator (``--mode h2h``) at it with the issuer simulator
as target, so the same sale traffic the switch sends upstream crosses one extra process hop that does
nothing but ``transport.write`` the received bytes.  The switch's throughput is reported as a ratio of
this one.  One upstream connection per client connection; reading from a side pauses while the other
side's write buffer is above the high-water mark (flow control), so the relay never buffers without bound.

    python bench/forwarder.py --listen 127.0.0.1:0 --target 127.0.0.1:7001
    # prints "forwarder listening on 127.0.0.1:PORT" once ready; SIGTERM/SIGINT stop it
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any


class _Half(asyncio.Protocol):
    """One side of a relayed connection; ``peer`` is the other side's protocol."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.peer: _Half | None = None
        self.pending: list[bytes] = []  # bytes received before the peer was connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.pending.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.close()

    def pause_writing(self) -> None:  # our write buffer is full: stop reading from the other side
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class _Client(_Half):
    def __init__(self, target: tuple[str, int]) -> None:
        super().__init__()
        self.target = target

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        transport.pause_reading()  # type: ignore[attr-defined]
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(_Half, *self.target)
        except OSError:
            self.transport.close()
            return
        upstream.peer, self.peer = self, upstream
        for data in self.pending:
            upstream.transport.write(data)
        self.pending.clear()
        if not self.transport.is_closing():
            self.transport.resume_reading()


async def serve(listen: tuple[str, int], target: tuple[str, int], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Client(target), listen[0], listen[1], backlog=1024)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"forwarder listening on {host}:{port}", flush=True)
    await stop.wait()
    server.close()


def _hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="bare uvloop TCP forwarder (the ceiling for bench_switch)")
    p.add_argument("--listen", type=_hostport, default=("127.0.0.1", 0), metavar="HOST:PORT")
    p.add_argument("--target", type=_hostport, required=True, metavar="HOST:PORT")
    args = p.parse_args(argv)
    import uvloop

    async def _main() -> None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await serve(args.listen, args.target, stop)

    uvloop.run(_main())
    return 0


if __name__ == "__main__":
    sys.exit(main())
