"""An application that listens wherever an attacker might knock, and says what got through.

`app`: TCP and UDP on every given port, both families (what an HTTP/3 server such as Caddy does on
443, times thousands of ports). TCP replies name the port; every UDP datagram is printed on stdout
("udp <family> <port> <payload>") and answered, so the test sees each one that reached a socket.

`observer` (root, CAP_NET_RAW): raw sockets for protocols the kernel may have no socket type for
(SCTP here has no kernel module, DCCP left the kernel in 6.16). A raw socket receives a copy of every
packet of its protocol that passed the netfilter input hooks, so it sees exactly what a userspace
stack (usrsctp, for example) would. Every attack packet seen is printed ("raw <proto> <family> <id>").
"""

from __future__ import annotations

import argparse
import contextlib
import re
import resource
import selectors
import socket
import struct
import sys
import threading

MARKER = re.compile(rb"MGWATK(\d+)\.")
SCTP = 132
SO_RCVBUFFORCE = 33  # asm-generic/socket.h; not in Python's socket module


def _bind(family: int, kind: int, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == 6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind(("0.0.0.0" if family == 4 else "::", port))
    sock.setblocking(False)
    return sock


def attack_id(payload: bytes) -> str:
    found = MARKER.search(payload)
    return found.group(1).decode() if found else "-"


def _answer_tcp(conn: socket.socket, name: str) -> None:
    with conn:
        try:
            conn.settimeout(3)
            conn.recv(4096)
            conn.sendall(f"app={name} port={conn.getsockname()[1]}\n".encode())
        except OSError:
            pass


def run_app(name: str, tcp_ports: list[int], udp_ports: list[int], families: list[int]) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    selector = selectors.DefaultSelector()
    for family in families:
        for port in tcp_ports:
            sock = _bind(family, socket.SOCK_STREAM, port)
            sock.listen(64)
            selector.register(sock, selectors.EVENT_READ, "tcp")
        for port in udp_ports:
            selector.register(_bind(family, socket.SOCK_DGRAM, port), selectors.EVENT_READ, "udp")
    print("ready", flush=True)
    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                if key.data == "tcp":
                    conn, _ = sock.accept()
                    conn.setblocking(True)
                    threading.Thread(target=_answer_tcp, args=(conn, name), daemon=True).start()
                    continue
                payload, peer = sock.recvfrom(2048)
            except (BlockingIOError, ConnectionError):
                continue
            family = 4 if sock.family == socket.AF_INET else 6
            port = sock.getsockname()[1]
            print(f"udp {family} {port} {attack_id(payload)}", flush=True)
            with contextlib.suppress(OSError):
                sock.sendto(f"app={name} udp port={port}\n".encode(), peer)


def _raw_id(protocol: int, family: int, packet: bytes) -> str:
    if family == 4:  # IPv4 raw sockets get the IP header too
        packet = packet[(packet[0] & 0x0F) * 4:]
    if protocol == SCTP and len(packet) >= 20:  # the INIT chunk's initiate tag carries the attempt id
        return str(struct.unpack("!I", packet[16:20])[0] - 1)
    return attack_id(packet)


def run_observer(protocols: list[int], families: list[int]) -> None:
    selector = selectors.DefaultSelector()
    for family in families:
        for protocol in protocols:
            sock = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_RAW, protocol)
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, (protocol, family))
    print("ready", flush=True)
    while True:
        for key, _ in selector.select():
            protocol, family = key.data
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            while True:
                try:
                    packet = sock.recv(65535)
                except BlockingIOError:
                    break
                print(f"raw {protocol} {family} {_raw_id(protocol, family, packet)}", flush=True)


def ports(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["app", "observer"])
    parser.add_argument("--name", default="app")
    parser.add_argument("--tcp-ports", type=ports, default=[])
    parser.add_argument("--udp-ports", type=ports, default=[])
    parser.add_argument("--protocols", type=ports, default=[])
    parser.add_argument("--families", type=ports, default=[4, 6])
    args = parser.parse_args()
    if args.role == "app":
        run_app(args.name, args.tcp_ports, args.udp_ports, args.families)
    else:
        run_observer(args.protocols, args.families)


if __name__ == "__main__":
    sys.exit(main())
