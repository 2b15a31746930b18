"""A stand-in for the kube-apiserver: HTTPS, bearer-token auth, only the endpoints this project uses.

The integration and node tests drive the cluster's state from fixtures through it (docs/design.md, "Testing");
the client code under test is the same that talks to a real cluster. RBAC and the admission policy are the real
API server's in tests/cluster/. Pods come from a JSON fixture file re-read on every request, so a test
can change the cluster by rewriting it. Deletions and events are appended to a journal file.

Nodes (GET, merge PATCH) behave like the apiserver where the start-up taint gate depends on it: a
resourceVersion in the patch is a precondition (409 on mismatch), every write bumps it, RBAC denials
("forbidden": ["patch nodes"]) answer 403 naming the fixture's "user". "races" holds merge patches another
agent lands on a node just before our next PATCH of it is handled.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import ssl
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

POD_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)$")
LIST_PATH = re.compile(r"^/api/v1/(?:namespaces/([^/]+)/)?pods$")
EVENTS_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/events$")
DAEMONSET_PATH = re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/daemonsets/([^/]+)$")
NODE_PATH = re.compile(r"^/api/v1/nodes/([^/]+)$")
MERGE_PATCH = "application/merge-patch+json"
WATCH_POLL_SECONDS = 0.1


def merge_patch(target: object, patch: object) -> object:
    """RFC 7386: objects merge key by key, null removes, anything else (lists too) replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
            "message": message}


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
            if self.connection.getpeercert():  # a client certificate the CA verified
                return True
            accepted = {token, *self._fixtures().get("tokens", [])}  # "tokens": ones it issued since (rotation)
            if self.headers.get("Authorization") not in {f"Bearer {t}" for t in accepted}:
                self._send(401, {"kind": "Status", "code": 401, "reason": "Unauthorized"})
                return False
            return True

        def _fixtures(self) -> dict:
            with open(fixtures) as f:
                return json.load(f)

        def _pods(self) -> dict:
            return self._fixtures().get("pods", {})

        def _store_pods(self, pods: dict) -> None:
            doc = self._fixtures()
            doc["pods"] = pods
            self._store(doc)

        def _selected(self, namespace: str | None, query: dict) -> dict:
            selector = dict(s.split("=", 1) for s in query.get("fieldSelector", [""])[0].split(",") if s)
            node = selector.get("spec.nodeName")
            return {key: pod for key, pod in self._pods().items()
                    if (namespace is None or key.startswith(namespace + "/"))
                    and (node is None or pod.get("spec", {}).get("nodeName") == node)}

        def _watch(self, namespace: str | None, query: dict) -> None:
            """Stream ADDED for the current pods, then MODIFIED/ADDED/DELETED as the fixture changes."""
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            timeout = min(float(query.get("timeoutSeconds", ["5"])[0]), 5.0)
            known: dict = {}
            deadline = time.monotonic() + timeout
            try:
                while time.monotonic() < deadline:
                    current = self._selected(namespace, query)
                    for key, pod in current.items():
                        if known.get(key) != pod:
                            kind = "MODIFIED" if key in known else "ADDED"
                            self.wfile.write(json.dumps({"type": kind, "object": pod}).encode() + b"\n")
                    for key in set(known) - set(current):
                        self.wfile.write(json.dumps({"type": "DELETED", "object": known[key]}).encode() + b"\n")
                    self.wfile.flush()
                    known = current
                    time.sleep(WATCH_POLL_SECONDS)
            except (BrokenPipeError, ConnectionResetError):
                pass

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
                if query.get("watch", [""])[0].lower() in ("true", "1"):
                    self._watch(match[1], query)
                    return
                items = list(self._selected(match[1], query).values())
                self._send(200, {"kind": "PodList", "apiVersion": "v1",
                                 "metadata": {"resourceVersion": "1"}, "items": items})
            elif match := NODE_PATH.match(url.path):
                if self._forbidden("get", match[1]):
                    return
                node = self._fixtures().get("nodes", {}).get(match[1])
                if node is None:
                    self._send(404, status(404, "NotFound", f'nodes "{match[1]}" not found'))
                else:
                    self._send(200, node)
            elif match := DAEMONSET_PATH.match(url.path):
                ds = self._fixtures().get("daemonsets", {}).get(f"{match[1]}/{match[2]}")
                if ds is None:
                    self._send(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                else:
                    self._send(200, ds)
            else:
                self._send(404, {"kind": "Status", "code": 404, "reason": "NotFound"})

        def _body(self) -> dict:
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length) or b"{}")

        def _existing_pod(self) -> tuple[str, dict, dict] | None:
            """(key, all pods, request body) for a mutating request on an existing pod; else replies itself."""
            if not self._authorized():
                return None
            match = POD_PATH.match(urllib.parse.urlsplit(self.path).path)
            pods = self._pods() if match else {}
            key = f"{match[1]}/{match[2]}" if match else ""
            if key not in pods:
                self._send(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                return None
            return key, pods, self._body()

        def do_DELETE(self) -> None:
            if (found := self._existing_pod()) is None:
                return
            key, pods, body = found
            wanted = (body.get("preconditions") or {}).get("uid")
            if wanted and pods[key]["metadata"]["uid"] != wanted:
                self._send(409, {"kind": "Status", "code": 409, "reason": "Conflict"})
                return
            self._record({"verb": "delete", "pod": key, "body": body})
            deleted = pods.pop(key)
            self._store_pods(pods)
            self._send(200, deleted)  # like the apiserver: the pod object being deleted

        def _forbidden(self, verb: str, name: str) -> bool:
            """An RBAC denial the fixture asks for ("patch nodes"), worded like the apiserver's."""
            if f"{verb} nodes" not in self._fixtures().get("forbidden", []):
                return False
            user = self._fixtures().get("user", {}).get("username", "system:anonymous")
            self._send(403, status(403, "Forbidden", f'nodes "{name}" is forbidden: User "{user}" cannot {verb} '
                                                     'resource "nodes" in API group "" at the cluster scope'))
            return True

        def _patch_node(self, name: str) -> None:
            """Merge patch with the apiserver's optimistic concurrency, then a new resourceVersion."""
            if self._forbidden("patch", name):
                return
            if self.headers.get("Content-Type") != MERGE_PATCH:
                self._send(415, status(415, "UnsupportedMediaType", f"only {MERGE_PATCH} is served for nodes"))
                return
            body = self._body()
            doc = self._fixtures()
            nodes = doc.get("nodes", {})
            if name not in nodes:
                self._send(404, status(404, "NotFound", f'nodes "{name}" not found'))
                return
            races = doc.get("races", {}).get(name, [])
            if races:  # another agent's write lands between our read and this write
                nodes[name] = self._bump(merge_patch(nodes[name], races.pop(0)))
            old = nodes[name]
            new = merge_patch(copy.deepcopy(old), body)
            if not new["spec"].get("taints", True):
                del new["spec"]["taints"]  # omitempty, as the apiserver stores it
            if new["metadata"].get("resourceVersion") != old["metadata"]["resourceVersion"]:
                self._store(doc)
                self._record({"verb": "patch-node", "node": name, "body": body, "code": 409})
                self._send(409, status(409, "Conflict", f'Operation cannot be fulfilled on nodes "{name}": the object '
                                                        "has been modified; please apply your changes to the latest "
                                                        "version and try again"))
                return
            nodes[name] = self._bump(new)
            self._store(doc)
            self._record({"verb": "patch-node", "node": name, "body": body, "code": 200})
            self._send(200, nodes[name])

        @staticmethod
        def _bump(node: dict) -> dict:
            node["metadata"]["resourceVersion"] = str(int(node["metadata"]["resourceVersion"]) + 1)
            return node

        def _store(self, doc: dict) -> None:
            with open(fixtures + ".tmp", "w") as f:
                json.dump(doc, f)
            os.replace(fixtures + ".tmp", fixtures)

        def do_PATCH(self) -> None:
            if match := NODE_PATH.match(urllib.parse.urlsplit(self.path).path):
                if self._authorized():
                    self._patch_node(match[1])
                return
            if (found := self._existing_pod()) is None:
                return
            key, pods, body = found
            labels = (body.get("metadata") or {}).get("labels") or {}
            pods[key]["metadata"].setdefault("labels", {}).update(labels)
            self._store_pods(pods)
            self._record({"verb": "patch", "pod": key, "body": body})
            self._send(200, pods[key])

        def do_POST(self) -> None:
            if not self._authorized():
                return
            if match := EVENTS_PATH.match(urllib.parse.urlsplit(self.path).path):
                event = self._body()
                self._record({"verb": "event", "namespace": match[1], "body": event})
                self._send(201, event)  # like the apiserver: the created object
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
    tls.verify_mode = ssl.CERT_OPTIONAL  # client certificates signed by the stand-in's CA authenticate too
    tls.load_verify_locations(args.cert)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
