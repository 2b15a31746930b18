"""The cluster's certificates and keys, made with openssl into one directory, and a kubeconfig per identity.

One CA signs everything: the API server's serving certificate, the client certificates of the admin and of
each component (their CN and O are the user and groups RBAC and the Node authorizer see), and the kubelet's
for later. The service-account key pair signs and verifies the tokens the API server issues. Certificates
live two days: a run never needs more, and nothing outlives the run's temporary directory.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

CURVE = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
DAYS = "2"


@dataclass(frozen=True)
class Client:
    """A client certificate: file stem, the user (CN) and the groups (O) the API server reads from it."""

    name: str
    user: str
    groups: tuple[str, ...] = ()


def clients(node: str) -> tuple[Client, ...]:
    """The admin, the components that run, the kubelet of `node` (for a later kubelet) and the API server's
    client for kubelets (system:masters, as kubeadm gave it before 1.29: no kubelet asks yet)."""
    return (Client("admin", "admin", ("system:masters",)),
            Client("kube-controller-manager", "system:kube-controller-manager"),
            Client("kube-scheduler", "system:kube-scheduler"),
            Client(f"kubelet-{node}", f"system:node:{node}", ("system:nodes",)),
            Client("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",)))


def subject(cn: str, groups: tuple[str, ...] = ()) -> str:
    return "".join(f"/O={group}" for group in groups) + f"/CN={cn}"


class Pki:
    """The files of one cluster's PKI under `directory`; make() writes them."""

    def __init__(self, directory: Path, node: str, node_ip: str, service_ip: str) -> None:
        self.dir = directory
        self.node = node
        self.node_ip = node_ip
        self.service_ip = service_ip
        self.ca = directory / "ca.crt"
        self.ca_key = directory / "ca.key"
        self.sa_key = directory / "sa.key"
        self.sa_pub = directory / "sa.pub"

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    def kubeconfig(self, name: str) -> Path:
        return self.dir / f"{name}.kubeconfig"

    def make(self, server: str) -> None:
        """The CA, the API server's certificate, every client's certificate and kubeconfig, the SA key pair,
        and `token.kubeconfig`: the cluster alone, for a caller that brings a bearer token."""
        self.dir.mkdir(parents=True, exist_ok=True)
        openssl("req", "-x509", *CURVE, "-days", DAYS, "-subj", "/CN=microgateway-cni-test-ca",
                "-keyout", str(self.ca_key), "-out", str(self.ca))
        names = ["kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
                 "localhost"]
        addresses = ["127.0.0.1", self.node_ip, self.service_ip]
        alt = ",".join([*(f"DNS:{n}" for n in names), *(f"IP:{a}" for a in addresses)])
        self._sign("apiserver", subject("kube-apiserver"), "serverAuth", f"subjectAltName={alt}\n")
        for client in clients(self.node):
            self._sign(client.name, subject(client.user, client.groups), "clientAuth")
            self._write_kubeconfig(client.name, server, {"client-certificate": str(self.cert(client.name)),
                                                         "client-key": str(self.key(client.name))})
        self._write_kubeconfig("token", server, {})
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(self.sa_key))
        openssl("pkey", "-in", str(self.sa_key), "-pubout", "-out", str(self.sa_pub))

    def _sign(self, name: str, subj: str, usage: str, extra: str = "") -> None:
        """A key and a CSR, then the certificate the CA signs with exactly the extensions given (no CA bit)."""
        csr, ext = self.dir / f"{name}.csr", self.dir / f"{name}.ext"
        ext.write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                       f"extendedKeyUsage={usage}\n{extra}")
        openssl("req", "-new", *CURVE, "-subj", subj, "-keyout", str(self.key(name)), "-out", str(csr))
        openssl("x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(self.ca_key), "-CAcreateserial",
                "-days", DAYS, "-extfile", str(ext), "-out", str(self.cert(name)))
        csr.unlink()
        ext.unlink()

    def _write_kubeconfig(self, name: str, server: str, user: dict[str, str]) -> None:
        doc = {"apiVersion": "v1", "kind": "Config", "current-context": name,
               "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": str(self.ca)}}],
               "users": [{"name": name, "user": user}],
               "contexts": [{"name": name, "context": {"cluster": "test", "user": name}}]}
        self.kubeconfig(name).write_text(json.dumps(doc, indent=1))


def openssl(*args: str) -> None:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {done.stderr.strip()}")
