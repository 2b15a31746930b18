"""A DNS resolver stand-in and a UDP echo service, for a test netns outside the protected pod.

The protected pod's own lookups (glibc, through /etc/resolv.conf) and its outbound UDP must keep
working when non-TCP inbound is dropped: their answers are replies to flows the pod started. Every
name resolves to ANSWER_V4 / ANSWER_V6; the echo service returns each datagram to its sender.
"""

from __future__ import annotations

import argparse
import selectors
import socket
import struct
import sys

ANSWER_V4 = "192.0.2.53"
ANSWER_V6 = "2001:db8::53"
A, AAAA = 1, 28


def answer(query: bytes) -> bytes:
    """A response to a single-question query: one A or AAAA record, else no records."""
    ident, _flags, qdcount = struct.unpack("!HHH", query[:6])
    end = 12
    while query[end]:
        end += query[end] + 1
    question = query[12:end + 5]
    qtype = struct.unpack("!H", query[end + 1:end + 3])[0]
    records = b""
    if qtype == A:
        records = b"\xc0\x0c" + struct.pack("!HHIH", A, 1, 60, 4) + socket.inet_pton(socket.AF_INET, ANSWER_V4)
    elif qtype == AAAA:
        records = b"\xc0\x0c" + struct.pack("!HHIH", AAAA, 1, 60, 16) + socket.inet_pton(socket.AF_INET6, ANSWER_V6)
    header = struct.pack("!HHHHHH", ident, 0x8180, qdcount, 1 if records else 0, 0, 0)
    return header + question + records


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--families", default="4,6")
    parser.add_argument("--echo-port", type=int, default=7)
    args = parser.parse_args()
    selector = selectors.DefaultSelector()
    for family in (int(f) for f in args.families.split(",")):
        for port, role in ((53, "dns"), (args.echo_port, "echo")):
            sock = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
            if family == 6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(("0.0.0.0" if family == 4 else "::", port))
            selector.register(sock, selectors.EVENT_READ, role)
    print("ready", flush=True)
    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            data, peer = sock.recvfrom(2048)
            try:
                sock.sendto(answer(data) if key.data == "dns" else data, peer)
            except (IndexError, struct.error, OSError):
                continue


if __name__ == "__main__":
    sys.exit(main())
