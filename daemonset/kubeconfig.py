"""The plugin's kubeconfig: the installer's service-account token and CA, for the API server the pod sees."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from typing import Any

from cni.contract import PLUGIN_TYPE
from daemonset import files
from daemonset.settings import Settings


def kubeconfig_document(server: str, ca_pem: bytes, token: str) -> dict[str, Any]:
    """JSON (valid YAML): the plugin parses it without importing a YAML library on the ADD path."""
    return {"apiVersion": "v1", "kind": "Config", "current-context": PLUGIN_TYPE,
            "clusters": [{"name": "local", "cluster": {
                "server": server, "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
            "users": [{"name": PLUGIN_TYPE, "user": {"token": token}}],
            "contexts": [{"name": PLUGIN_TYPE, "context": {"cluster": "local", "user": PLUGIN_TYPE}}]}


def kubeconfig_path(settings: Settings) -> str:
    return os.path.join(settings.cni_net_dir, settings.kubeconfig_name)


def write_kubeconfig(settings: Settings, log: Callable[..., None]) -> bool:
    """Write it (mode 0600, atomically) from the projected token as it is now; True if it changed, as it
    does when the kubelet rotates the token."""
    sa = settings.service_account_dir
    token = (files.read(os.path.join(sa, "token")) or b"").decode().strip()
    ca = files.read(os.path.join(sa, "ca.crt")) or b""
    if not token or not ca or not settings.api_server:
        raise RuntimeError(f"service account token/ca.crt in {sa} or KUBERNETES_SERVICE_HOST missing")
    data = (json.dumps(kubeconfig_document(settings.api_server, ca, token), indent=2) + "\n").encode()
    path = kubeconfig_path(settings)
    if files.read(path) == data:
        return False
    files.write_atomic(path, data, mode=0o600)
    log("info", "kubeconfig written", path=path)
    return True
