"""Reading one pod from the kube-apiserver with the kubeconfig the installer wrote.

One HTTP/1.0 GET over ssl, by hand, instead of the official `kubernetes` client or even http.client
(which imports the email package): either import alone would eat much of the ADD budget
(docs/design.md, "Performance budget"). HTTP/1.0 means no chunking: the body ends at EOF.
"""

from __future__ import annotations

import binascii
import json
import os
import socket
import ssl
import time
import urllib.parse

from cni.errors import INVALID_CONFIG, IO_FAILURE, TRY_AGAIN_LATER, UNKNOWN_CONTAINER, CniError
from cni.records import record

TYPE_CHECKING = False  # annotations only: typing stays off the per-pod path (cni/records.py)
if TYPE_CHECKING:
    from typing import Any

RETRY_INTERVAL_SECONDS = 0.5
REQUEST_TIMEOUT_SECONDS = 5.0


class ApiUnavailable(CniError):
    """The API cannot tell us about the pod: no usable kubeconfig, no answer before the deadline, its
    certificate or our identity refused. A 404 or an undecodable pod is an answer, and not this."""


@record
class Cluster:
    host: str
    port: int
    context: ssl.SSLContext
    token: str


def _load_document(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ApiUnavailable(INVALID_CONFIG, f"cannot read kubeconfig {path}: {exc.strerror}") from None
    try:
        doc = json.loads(raw)
    except ValueError:
        # The installer writes JSON (valid YAML); YAML written by hand costs the PyYAML import.
        import yaml

        try:
            doc = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ApiUnavailable(INVALID_CONFIG, f"kubeconfig {path} is neither JSON nor YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ApiUnavailable(INVALID_CONFIG, f"kubeconfig {path} is not a mapping")
    return doc


def _named(doc: dict[str, Any], section: str, name: str | None, key: str) -> dict[str, Any]:
    entries = doc.get(section) or []
    for entry in entries:
        if name is None or entry.get("name") == name:
            return entry.get(key) or {}
    raise ApiUnavailable(INVALID_CONFIG, f"kubeconfig has no {section} entry {name!r}")


def _pem_file(data: str) -> str:
    import tempfile

    fd, path = tempfile.mkstemp(prefix="mgw-cni-", suffix=".pem")
    with os.fdopen(fd, "wb") as f:
        f.write(binascii.a2b_base64(data))
    return path


def load_cluster(path: str) -> Cluster:
    """Server, CA, and bearer token or client certificate of the current context."""
    doc = _load_document(path)
    context_name = doc.get("current-context")
    context = _named(doc, "contexts", context_name or None, "context")
    cluster = _named(doc, "clusters", context.get("cluster"), "cluster")
    user = _named(doc, "users", context.get("user"), "user")
    server = urllib.parse.urlsplit(cluster.get("server", ""))
    if server.scheme != "https" or not server.hostname:
        raise ApiUnavailable(INVALID_CONFIG, f"kubeconfig {path}: server {cluster.get('server')!r} is not an https URL")
    # Trust only the cluster's CA: stricter than the system store, and loading the system store
    # (create_default_context) costs tens of milliseconds on every pod start.
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if cluster.get("certificate-authority-data"):
            tls.load_verify_locations(cadata=binascii.a2b_base64(cluster["certificate-authority-data"]).decode())
        elif cluster.get("certificate-authority"):
            tls.load_verify_locations(cafile=cluster["certificate-authority"])
        if user.get("client-certificate-data") or user.get("client-certificate"):
            temp: list[str] = []
            try:
                cert = user.get("client-certificate") or _pem_file(user["client-certificate-data"])
                if user.get("client-certificate-data"):
                    temp.append(cert)
                key = user.get("client-key") or _pem_file(user["client-key-data"])
                if user.get("client-key-data"):
                    temp.append(key)
                tls.load_cert_chain(cert, key)
            finally:
                for name in temp:
                    os.unlink(name)
    except (OSError, ssl.SSLError, ValueError, KeyError) as exc:
        raise ApiUnavailable(INVALID_CONFIG, f"kubeconfig {path}: TLS material unusable: {exc}") from None
    token = user.get("token", "")
    if not token and user.get("tokenFile"):
        try:
            with open(user["tokenFile"]) as f:
                token = f.read().strip()
        except OSError as exc:
            raise ApiUnavailable(INVALID_CONFIG, f"kubeconfig {path}: cannot read tokenFile: {exc.strerror}") from None
    port = server.port or 443
    return Cluster(host=server.hostname, port=port, context=tls, token=token)


MAX_RESPONSE_BYTES = 16 * 1024 * 1024


def _get(cluster: Cluster, path: str) -> tuple[int, bytes]:
    lines = [f"GET {path} HTTP/1.0", f"Host: {cluster.host}:{cluster.port}", "Accept: application/json",
             "User-Agent: microgateway-cni"]
    if cluster.token:
        lines.append(f"Authorization: Bearer {cluster.token}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    # An ASCII host as bytes skips the IDNA encoding of getaddrinfo and ssl, and so the codec's import.
    address = cluster.host.encode() if cluster.host.isascii() else cluster.host
    with socket.create_connection((address, cluster.port),  # type: ignore[arg-type] # bytes: see above
                                  timeout=REQUEST_TIMEOUT_SECONDS) as raw, \
            cluster.context.wrap_socket(raw, server_hostname=address) as tls:
        tls.sendall(request)
        chunks: list[bytes] = []
        size = 0
        while chunk := tls.recv(65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise OSError(f"response larger than {MAX_RESPONSE_BYTES} bytes")
    head, sep, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if not sep or len(status_line) < 2 or not status_line[1].isdigit():
        raise OSError("truncated or malformed HTTP response")
    for header in head.split(b"\r\n")[1:]:
        name, _, value = header.partition(b":")
        if name.strip().lower() == b"content-length" and len(body) < int(value.strip() or 0):
            raise OSError("truncated HTTP response body")
    return int(status_line[1]), body


def get_pod(cluster: Cluster, namespace: str, name: str, deadline_seconds: float) -> dict[str, Any]:
    """GET the pod, retrying transient failures until the deadline; then CNI error 11 (fail closed)."""
    path = f"/api/v1/namespaces/{urllib.parse.quote(namespace)}/pods/{urllib.parse.quote(name)}"
    deadline = time.monotonic() + deadline_seconds
    attempts = 0
    while True:
        attempts += 1
        try:
            status, body = _get(cluster, path)
        except ssl.SSLCertVerificationError as exc:
            raise ApiUnavailable(IO_FAILURE, f"kube-apiserver certificate rejected: {exc.verify_message}") from None
        except (OSError, ValueError) as exc:
            status, body, problem = 0, b"", f"{type(exc).__name__}: {exc}"
        else:
            problem = f"HTTP {status}"
        if status == 200:
            try:
                pod: dict[str, Any] = json.loads(body)
                return pod
            except ValueError:
                raise CniError(IO_FAILURE, f"kube-apiserver sent an undecodable pod {namespace}/{name}") from None
        if status == 404:
            raise CniError(UNKNOWN_CONTAINER, f"pod {namespace}/{name} does not exist in the API")
        if status in (401, 403):
            raise ApiUnavailable(IO_FAILURE, f"kube-apiserver refused pod {namespace}/{name}: HTTP {status}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ApiUnavailable(
                TRY_AGAIN_LATER,
                f"kube-apiserver unreachable: cannot read pod {namespace}/{name} "
                f"after {attempts} attempts in {deadline_seconds:g}s",
                problem,
            )
        time.sleep(min(RETRY_INTERVAL_SECONDS, remaining))
