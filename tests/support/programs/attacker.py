"""The attacking side of tests/integration/test_bypass.py, run in a pod netns (root for raw sockets).

Reads a plan (JSON on stdin) of attempts `[id, host, port, scope]` - raw ones `[id, protocol, host,
port, scope]`, scope an interface name for link-local addresses - and prints one JSON object with
every TCP and UDP reply by attempt id. TCP connects run concurrently on non-blocking sockets; UDP
and raw packets are paced so a burst never overflows the veth backlog (a packet lost there would
look like a packet filtered). Every payload carries `MGWATK<id>.` so the receiving side can name it.
"""

from __future__ import annotations

import asyncio
import json
import selectors
import socket
import struct
import sys
import time

SCTP, UDPLITE = 132, 136
PACE_EVERY, PACE_SECONDS = 64, 0.002
READ_TIMEOUT = 15.0  # generous: a busy shared CI machine can keep an accepted connection waiting for seconds


def crc32c(data: bytes) -> int:
    """SCTP's checksum (RFC 3309), so INIT chunks are valid and conntrack sees them as NEW flows."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


CRC32C_TABLE = _crc32c_table()


def raw_payload(protocol: int, attempt: int, port: int) -> bytes:
    """A first packet of `protocol` to `port`: an SCTP INIT, else source and destination ports and a marker."""
    if protocol == SCTP:
        init = struct.pack("!BBHIIHHI", 1, 0, 20, attempt + 1, 65535, 1, 1, attempt)
        ports_and_tag = struct.pack("!HHI", 40000, port, 0)
        checksum = crc32c(ports_and_tag + b"\0\0\0\0" + init)
        return ports_and_tag + struct.pack("<I", checksum) + init
    body = struct.pack("!HH", 40000, port) + f"MGWATK{attempt}.".encode()
    if protocol == UDPLITE:  # checksum coverage 8: header only, which a raw socket does not check anyway
        body = struct.pack("!HHHH", 40000, port, 8, 0) + f"MGWATK{attempt}.".encode()
    return body


def address(host: str, port: int, scope: str) -> tuple:
    if ":" in host:
        return (host, port, 0, socket.if_nametoindex(scope) if scope else 0)
    return (host, port)


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


async def _tcp_one(attempt: list, limit: asyncio.Semaphore, timeout: float) -> tuple[str, str]:
    """Connect within `timeout` (a dropped SYN ends here), then allow the busy listener READ_TIMEOUT."""
    key, host, port, scope = attempt
    loop = asyncio.get_running_loop()
    async with limit:
        sock = socket.socket(family_of(host), socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, address(host, port, scope)), timeout)
            await loop.sock_sendall(sock, f"MGWATK{key}.\n".encode())
            data = b""
            while chunk := await asyncio.wait_for(loop.sock_recv(sock, 4096), READ_TIMEOUT):
                data += chunk
            return str(key), data.decode(errors="replace").strip()
        except (OSError, TimeoutError) as exc:
            return str(key), f"error: {type(exc).__name__}: {exc}"
        finally:
            sock.close()


async def _tcp_all(attempts: list, concurrency: int, timeout: float) -> dict[str, str]:
    limit = asyncio.Semaphore(concurrency)
    return dict(await asyncio.gather(*(_tcp_one(a, limit, timeout) for a in attempts)))


def _udp_all(attempts: list, linger: float) -> dict[str, str]:
    """Send every datagram, then collect the answers for `linger` seconds after the last one."""
    sockets = {family: socket.socket(family, socket.SOCK_DGRAM) for family in (socket.AF_INET, socket.AF_INET6)}
    selector = selectors.DefaultSelector()
    for sock in sockets.values():
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    by_peer: dict[tuple[str, int], str] = {}
    replies: dict[str, str] = {}

    def drain(wait: float) -> None:
        for key, _ in selector.select(wait):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            while True:
                try:
                    data, peer = sock.recvfrom(2048)
                except (BlockingIOError, ConnectionError):
                    break
                attempt = by_peer.get((peer[0].split("%")[0], peer[1]))
                if attempt is not None:
                    replies[attempt] = data.decode(errors="replace").strip()

    for n, (key, host, port, scope) in enumerate(attempts):
        by_peer[(host, port)] = str(key)
        try:
            sockets[family_of(host)].sendto(f"MGWATK{key}.\n".encode(), address(host, port, scope))
        except OSError as exc:
            replies[str(key)] = f"error: {exc}"
        if n % PACE_EVERY == PACE_EVERY - 1:
            time.sleep(PACE_SECONDS)
            drain(0)
    deadline = time.monotonic() + linger
    while (left := deadline - time.monotonic()) > 0:
        drain(left)
    return replies


def _raw_all(attempts: list) -> None:
    sockets: dict[tuple[int, socket.AddressFamily], socket.socket] = {}
    for n, (key, protocol, host, port, scope) in enumerate(attempts):
        family = family_of(host)
        sock = sockets.get((protocol, family))
        if sock is None:
            sock = sockets[(protocol, family)] = socket.socket(family, socket.SOCK_RAW, protocol)
        sock.sendto(raw_payload(protocol, key, port), address(host, 0, scope))
        if n % PACE_EVERY == PACE_EVERY - 1:
            time.sleep(PACE_SECONDS)


def main() -> None:
    plan = json.load(sys.stdin)
    _raw_all(plan.get("raw", []))
    udp = _udp_all(plan.get("udp", []), plan.get("linger", 1.0))
    tcp = asyncio.run(_tcp_all(plan.get("tcp", []), plan.get("concurrency", 128), plan.get("timeout", 3.0)))
    print(json.dumps({"tcp": tcp, "udp": udp}))


if __name__ == "__main__":
    main()
