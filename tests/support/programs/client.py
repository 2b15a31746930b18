"""A client inside a pod netns: connects to each target and prints one JSON object of replies."""

from __future__ import annotations

import json
import socket
import sys
from concurrent.futures import ThreadPoolExecutor


def probe(target: str, timeout: float = 2.0) -> str:
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect((host, int(port)))
            sock.sendall(b"hello\n")
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            return data.decode().strip()
    except OSError as exc:
        return f"error: {type(exc).__name__}: {exc}"


def main() -> None:
    targets = sys.argv[1:]
    with ThreadPoolExecutor(max_workers=32) as pool:
        replies = dict(zip(targets, pool.map(probe, targets), strict=True))
    print(json.dumps(replies))


if __name__ == "__main__":
    main()
