"""The probe: prove that 127.0.0.1:19003 (and [::1]:19003) is redirected to our own listener on :13378.

Three independent proofs, so no shortcut passes (Airlock, Istio and Linkerd validators combined):
the connection must arrive on *our* listener, its original destination must be the validation port,
and a random token the listener sends must come back intact over that very connection.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time

from cni.contract import LOOPBACK
from cni.records import record

SO_ORIGINAL_DST = 80  # IP6T_SO_ORIGINAL_DST is the same number at SOL_IPV6
RETRY_PAUSE_SECONDS = 0.1


class PortInUse(Exception):
    """Something else already listens on the Engine port: the probe cannot tell what it would reach."""


@record
class ProbeResult:
    family: int
    ok: bool
    outcome: str
    attempts: int
    ms: float
    detail: str = ""

    def as_dict(self) -> dict[str, object]:
        return self._asdict()  # type: ignore[attr-defined,no-any-return]  # a namedtuple: every field


def ipv6_loopback_present() -> bool:
    """::1 exists on lo unless IPv6 is disabled in this netns."""
    try:
        with open("/proc/self/net/if_inet6") as f:
            return any(line.startswith("00000000000000000000000000000001") for line in f)
    except FileNotFoundError:
        return False


def original_destination(conn: socket.socket, family: int) -> tuple[str, int]:
    if family == 4:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port, addr = struct.unpack_from("!2xH4s", raw)
        return socket.inet_ntop(socket.AF_INET, addr), port
    raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
    port, addr = struct.unpack_from("!2xH4x16s", raw)
    return socket.inet_ntop(socket.AF_INET6, addr), port


def _listen(family: int, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_STREAM)
    # Without SO_REUSEADDR a TIME_WAIT left by the probe blocks the Engine's bind on this port
    # right after the validator exits.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((LOOPBACK[family], port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(f"[{LOOPBACK[family]}]:{port}") from None
        raise
    sock.listen(8)
    sock.setblocking(False)
    return sock


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    """Up to `size` bytes; fewer only when the peer closed."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _attempt(listener: socket.socket, family: int, validation_port: int, timeout: float) -> tuple[str, str]:
    """One connection; (outcome, detail). outcome 'redirected' is the only pass."""
    client = socket.socket(listener.family, socket.SOCK_STREAM)
    client.settimeout(timeout)
    try:
        try:
            client.connect((LOOPBACK[family], validation_port))
        except ConnectionRefusedError:
            return "refused", f"nothing answered on [{LOOPBACK[family]}]:{validation_port}: no redirect rule"
        except TimeoutError:
            return "timeout", "connect timed out: packets dropped"
        readable, _, _ = select.select([listener], [], [], timeout)
        if not readable:
            return "foreign", "the connection was accepted by another listener, not redirected to ours"
        conn, _ = listener.accept()
        with conn:
            conn.setblocking(True)
            conn.settimeout(timeout)
            addr, port = original_destination(conn, family)
            if port != validation_port:
                return "wrong-port", f"original destination was port {port}, expected {validation_port}"
            token = os.urandom(16)  # the CSPRNG behind `secrets`, without its imports
            conn.sendall(token)
            client.sendall(_recv_exact(client, len(token)))
            if _recv_exact(conn, len(token)) != token:
                return "token-mismatch", "the random token did not come back intact"
            client.close()  # the client side closes first, so TIME_WAIT stays off the Engine port
            return "redirected", f"original destination [{addr}]:{port}"
    except OSError as exc:
        return "error", f"{type(exc).__name__}: {exc}"
    finally:
        client.close()


def probe_families(families: list[int], engine_port: int, validation_port: int,
                   deadline: float) -> list[ProbeResult]:
    """Probe every family in rounds until each passed or the deadline is reached.

    All listeners are bound first, so a taken Engine port fails before any probing; rounds give every
    family the same share of the deadline.
    """
    start = time.monotonic()
    listeners: dict[int, socket.socket] = {}
    try:
        for family in families:
            listeners[family] = _listen(family, engine_port)
        results: dict[int, ProbeResult] = {}
        attempts = dict.fromkeys(families, 0)
        while True:
            for family in families:
                if family in results and results[family].ok:
                    continue
                attempts[family] += 1
                remaining = deadline - time.monotonic()
                timeout = max(0.05, min(1.0, remaining / len(families)))
                outcome, detail = _attempt(listeners[family], family, validation_port, timeout)
                ms = round((time.monotonic() - start) * 1000, 2)
                results[family] = ProbeResult(family, outcome == "redirected", outcome, attempts[family], ms, detail)
            if all(r.ok for r in results.values()) or time.monotonic() + RETRY_PAUSE_SECONDS >= deadline:
                return [results[family] for family in families]
            time.sleep(RETRY_PAUSE_SECONDS)
    finally:
        for listener in listeners.values():
            listener.close()
