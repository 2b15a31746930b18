"""The kubelet's side of the Container Runtime Interface, for tests: runtime.v1 over gRPC."""

from tests.support.cri.client import CriError, RuntimeClient, to_dict

__all__ = ["CriError", "RuntimeClient", "to_dict"]
