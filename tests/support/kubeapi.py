"""A stand-in for the kube-apiserver: HTTPS, bearer-token auth, only the endpoints this project uses.

No kube-apiserver can run on the test machines (DESIGN §5); the client code under test is the same
that talks to a real cluster. Pods come from a JSON fixture file re-read on every request, so a test
can change the cluster by rewriting it. Deletions and events are appended to a journal file.
"""

from __future__ import annotations

import argparse
import json
import re
import ssl
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

POD_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)$")
LIST_PATH = re.compile(r"^/api/v1/(?:namespaces/([^/]+)/)?pods$")
EVENTS_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/events$")


def make_handler(fixtures: str, journal: str, token: str):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            if self.headers.get("Authorization") != f"Bearer {token}":
                self._send(401, {"kind": "Status", "code": 401, "reason": "Unauthorized"})
                return False
            return True

        def _pods(self) -> dict:
            with open(fixtures) as f:
                return json.load(f).get("pods", {})

        def _record(self, entry: dict) -> None:
            with open(journal, "a") as f:
                f.write(json.dumps(entry) + "\n")

        def do_GET(self) -> None:
            if not self._authorized():
                return
            url = urllib.parse.urlsplit(self.path)
            if match := POD_PATH.match(url.path):
                pod = self._pods().get(f"{match[1]}/{match[2]}")
                if pod is None:
                    self._send(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                else:
                    self._send(200, pod)
            elif match := LIST_PATH.match(url.path):
                query = urllib.parse.parse_qs(url.query)
                selector = dict(s.split("=", 1) for s in query.get("fieldSelector", [""])[0].split(",") if s)
                items = [pod for key, pod in self._pods().items()
                         if (match[1] is None or key.startswith(match[1] + "/"))
                         and all(pod.get("spec", {}).get("nodeName") == v
                                 for k, v in selector.items() if k == "spec.nodeName")]
                self._send(200, {"kind": "PodList", "apiVersion": "v1",
                                 "metadata": {"resourceVersion": "1"}, "items": items})
            else:
                self._send(404, {"kind": "Status", "code": 404, "reason": "NotFound"})

        def do_DELETE(self) -> None:
            if not self._authorized():
                return
            if match := POD_PATH.match(urllib.parse.urlsplit(self.path).path):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                self._record({"verb": "delete", "pod": f"{match[1]}/{match[2]}", "body": body})
                self._send(200, {"kind": "Status", "status": "Success"})
            else:
                self._send(404, {"kind": "Status", "code": 404})

        def do_POST(self) -> None:
            if not self._authorized():
                return
            if match := EVENTS_PATH.match(urllib.parse.urlsplit(self.path).path):
                length = int(self.headers.get("Content-Length") or 0)
                self._record({"verb": "event", "namespace": match[1], "body": json.loads(self.rfile.read(length))})
                self._send(201, {"kind": "Event"})
            else:
                self._send(404, {"kind": "Status", "code": 404})

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--fixtures", required=True)
    parser.add_argument("--journal", required=True)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(args.fixtures, args.journal, args.token))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(args.cert, args.key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
