"""A real Kubernetes control plane for the cluster tier: its PKI (pki.py) and its processes (controlplane.py)."""
