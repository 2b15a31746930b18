"""/healthz, /readyz and /metrics for the kubelet's probes and Prometheus."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.installs = Counter("microgateway_cni_installs", "Reconciliations by result", ["result"],
                                registry=self.registry)
        self.reverts = Counter("microgateway_cni_reverts_seen", "Chained entry removed by another agent",
                               registry=self.registry)
        self.repairs = Counter("microgateway_cni_repairs", "Pods repaired by result", ["result"],
                               registry=self.registry)
        self.ready = Gauge("microgateway_cni_ready", "1 while binary, kubeconfig and chained entry are in place "
                           "and the start-up taint is gone (or its gate is off)", registry=self.registry)
        # The start-up taint gate (daemonset/taint.py): is the node open to pods yet, how long it took, what failed.
        self.node_untainted = Gauge("microgateway_cni_node_untainted",
                                    "1 once this node carries no start-up taint of ours (lifted, absent, or gate off)",
                                    registry=self.registry)
        self.untaint_seconds = Gauge("microgateway_cni_untaint_seconds",
                                     "Seconds from installer start until the start-up taint was gone",
                                     registry=self.registry)
        self.untaint_failures = Counter("microgateway_cni_untaint_failures",
                                        "Failed attempts to lift the start-up taint by reason", ["reason"],
                                        registry=self.registry)


def serve(port: int, ready: Callable[[], bool], metrics: Metrics) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._reply(200, b"ok\n")
            elif self.path == "/readyz":
                is_ready = ready()
                metrics.ready.set(1 if is_ready else 0)
                self._reply(200 if is_ready else 503, b"ready\n" if is_ready else b"not ready\n")
            elif self.path == "/metrics":
                metrics.ready.set(1 if ready() else 0)
                self._reply(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            else:
                self._reply(404, b"not found\n")

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
