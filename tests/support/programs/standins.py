"""Real listeners that stand in for a pod's processes: the application, the Engine, the Istio proxy.

Each role runs as its own process under its own uid (the harness uses setpriv). Every reply names
the hops it went through, so a test can see the path a connection took.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import threading

from validator import probe


def original_destination(conn: socket.socket) -> tuple[str, int]:
    return probe.original_destination(conn, 4 if conn.family == socket.AF_INET else 6)


def listeners(port: int, families: list[int], host4: str = "0.0.0.0", host6: str = "::") -> list[socket.socket]:
    sockets = []
    for family in families:
        sock = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == 6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host4 if family == 4 else host6, port))
        sock.listen(4096)  # a burst of attack connections must not overflow the SYN backlog
        sockets.append(sock)
    return sockets


def relay(target: tuple[str, int], source: str | None, request: bytes) -> bytes:
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as upstream:
        upstream.settimeout(3)
        if source:
            upstream.bind((source, 0))
        upstream.connect(target)
        upstream.sendall(request)
        chunks = []
        while chunk := upstream.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


def read_request(conn: socket.socket) -> bytes:
    conn.settimeout(3)
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def serve(sockets: list[socket.socket], handle) -> None:
    def accept_loop(sock: socket.socket) -> None:
        while True:
            conn, peer = sock.accept()
            threading.Thread(target=guarded, args=(conn, peer), daemon=True).start()

    def guarded(conn: socket.socket, peer) -> None:
        with conn:
            try:
                conn.sendall(handle(conn, peer))
            except OSError as exc:
                with contextlib.suppress(OSError):
                    conn.sendall(f"error {exc}\n".encode())

    for sock in sockets:
        threading.Thread(target=accept_loop, args=(sock,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["app", "engine", "istio"])
    parser.add_argument("--name", required=True)
    parser.add_argument("--ports", default="", help="app: ports to listen on")
    parser.add_argument("--port", type=int, default=0, help="engine/istio: listen port")
    parser.add_argument("--families", default="4")
    parser.add_argument("--forward", default="", help="engine: ports forwarded to the app")
    parser.add_argument("--host4", default="0.0.0.0")
    parser.add_argument("--host6", default="::")
    args = parser.parse_args()
    families = [int(f) for f in args.families.split(",")]
    sockets: list[socket.socket] = []
    if args.role == "app":
        for port in (int(p) for p in args.ports.split(",")):
            for sock in listeners(port, families):
                sockets.append(sock)

        def handle(conn, peer):
            read_request(conn)
            return f"app={args.name} port={conn.getsockname()[1]}\n".encode()
    elif args.role == "engine":
        forward = {int(p) for p in args.forward.split(",") if p}
        sockets = listeners(args.port, families, args.host4, args.host6)

        def handle(conn, peer):
            request = read_request(conn)
            _addr, port = original_destination(conn)
            tag = f"engine={args.name} orig={port}"
            if port in forward:
                loopback = "127.0.0.1" if conn.family == socket.AF_INET else "::1"
                return f"{tag} -> ".encode() + relay((loopback, port), None, request)
            return f"{tag}\n".encode()
    else:
        sockets = listeners(args.port, families)

        def handle(conn, peer):
            request = read_request(conn)
            addr, port = original_destination(conn)
            if port == args.port:  # Envoy's inbound listener refuses its own port too: no relay loop
                return f"istio={args.name} refused {port}\n".encode()
            source = "127.0.0.6" if conn.family == socket.AF_INET else "::6"
            try:
                return f"istio={args.name} -> ".encode() + relay((addr, port), source, request)
            except OSError as exc:  # e.g. a link-local original destination, which has no scope here
                return f"istio={args.name} failed: {exc}\n".encode()

    serve(sockets, handle)


if __name__ == "__main__":
    sys.exit(main())
