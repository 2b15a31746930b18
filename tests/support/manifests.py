"""The DaemonSet manifests as `kubectl kustomize` renders them, as an operator would deploy them."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "daemonset" / "manifests"


def kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise FileNotFoundError("kubectl missing; scripts/setup.sh installs it (Debian's kubernetes-client)")
    out = subprocess.run([kubectl, "kustomize", str(directory)], check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def overlay_with_image(base: str, image: str) -> str:
    """An operator's kustomization (the README's): one of ours as its base, the image set with `images:`."""
    name, _, tag = image.rpartition(":")
    return (f"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {base}\n"
            f"images:\n  - name: microgateway-cni\n    newName: {name}\n    newTag: \"{tag}\"\n")


def render(overlay: str = "default", image: str | None = None) -> list[dict[str, Any]]:
    """Render one of our overlays; with image, through an operator's overlay that sets the image.

    kustomize accepts only relative paths to a base, so the operator's overlay is written in a temporary
    directory inside the checkout (build/) and names ours relative to it.
    """
    base = MANIFESTS / "overlays" / overlay
    if image is None:
        return kustomize(base)
    (ROOT / "build").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="overlay-", dir=ROOT / "build") as tmp:
        (Path(tmp) / "kustomization.yaml").write_text(overlay_with_image(os.path.relpath(base, tmp), image))
        return kustomize(Path(tmp))


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    if len(matches) != 1:
        raise LookupError(f"expected one {kind}{' ' + name if name else ''} in the rendered manifests, "
                          f"found {len(matches)}")
    return matches[0]
