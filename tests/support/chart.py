"""The Helm chart (charts/microgateway-cni) as helm renders it, and what may differ from the kustomize overlays.

The chart and daemonset/manifests/overlays are two ways to install one set of objects; tests/chart/ renders both
(`helm template`, `kubectl kustomize`) and compares them object by object after taking out, by name, what only
the chart adds: Helm's standard labels and the checksum annotation that rolls the DaemonSet.
"""

from __future__ import annotations

import copy
import difflib
import re
import shlex
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.support import components

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "microgateway-cni"
PRESETS = {"gke": CHART / "gke-values.yaml", "openshift": CHART / "openshift-values.yaml"}
# The overlays install into kube-system; the release is named after the objects.
RELEASE = "microgateway-cni"
NAMESPACE = "kube-system"

# The listed differences: labels Helm's conventions put on every object, and the pod template's annotation
# with the ConfigMap's checksum (kustomize's configMapGenerator would rename the ConfigMap instead).
HELM_LABELS = ("app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "app.kubernetes.io/version",
               "helm.sh/chart")
CHECKSUM_ANNOTATION = "checksum/config"

Key = tuple[str, str, str, str]  # apiVersion, kind, namespace ("" when cluster-scoped), name


class ChartError(RuntimeError):
    """helm refused: the message is helm's own (it names the value or the template)."""


def helm(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([components.binary("helm"), *args], capture_output=True, text=True, check=False, cwd=cwd)


def value_args(values: Iterable[Path] = (), settings: Iterable[str] = ()) -> list[str]:
    """`-f FILE` and `--set KEY=VALUE` arguments, in helm's order of precedence (later wins)."""
    return [*(f"--values={path}" for path in values), *(f"--set={setting}" for setting in settings)]


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render(values: Iterable[Path] = (), settings: Iterable[str] = (), *extra: str) -> list[dict[str, Any]]:
    """`helm template` with the overlays' release name and namespace; helm's refusal raises ChartError."""
    done = helm("template", RELEASE, str(CHART), f"--namespace={NAMESPACE}", *value_args(values, settings), *extra)
    if done.returncode:
        raise ChartError(done.stderr.strip())
    return documents(done.stdout)


def install_dry_run(*args: str) -> tuple[list[dict[str, Any]], str]:
    """`helm install ARGS --dry-run=client`, which needs no cluster: the objects it would create, its NOTES."""
    done = helm("install", *args, "--dry-run=client")
    if done.returncode:
        raise ChartError(done.stderr.strip())
    manifest, _, notes = done.stdout.split("\nMANIFEST:\n", 1)[1].partition("\nNOTES:\n")
    return documents(manifest), notes


def lint(values: Iterable[Path] = ()) -> subprocess.CompletedProcess[str]:
    return helm("lint", "--strict", str(CHART), *value_args(values))


def key(doc: Mapping[str, Any]) -> Key:
    meta = doc["metadata"]
    return doc["apiVersion"], doc["kind"], meta.get("namespace", ""), meta["name"]


def index(docs: Iterable[Mapping[str, Any]]) -> dict[Key, Mapping[str, Any]]:
    indexed: dict[Key, Mapping[str, Any]] = {}
    for doc in docs:
        if key(doc) in indexed:
            raise ValueError(f"{key(doc)} rendered twice")
        indexed[key(doc)] = doc
    return indexed


def without_chart_additions(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The object less the listed differences, so that what remains must equal the overlay's."""
    plain = copy.deepcopy(dict(doc))
    labels = plain["metadata"].get("labels", {})
    for label in HELM_LABELS:
        labels.pop(label, None)
    template = plain.get("spec", {}).get("template", {}).get("metadata", {})
    template.get("annotations", {}).pop(CHECKSUM_ANNOTATION, None)
    if template.get("annotations") == {}:
        del template["annotations"]
    return plain


def differences(chart: Iterable[Mapping[str, Any]], overlay: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every object only one side has, and a diff (overlay -> chart) of every object the two render unlike."""
    ours, theirs = index(chart), index(overlay)
    found = [f"only the chart makes {k}" for k in sorted(ours.keys() - theirs.keys())]
    found += [f"only the overlay makes {k}" for k in sorted(theirs.keys() - ours.keys())]
    for k in sorted(ours.keys() & theirs.keys()):
        mine, other = without_chart_additions(ours[k]), dict(theirs[k])
        if mine != other:
            diff = difflib.unified_diff(yaml.safe_dump(other).splitlines(), yaml.safe_dump(mine).splitlines(),
                                        "overlay", "chart", lineterm="")
            found.append(f"{k}:\n" + "\n".join(diff))
    return found


def find(docs: Iterable[Mapping[str, Any]], kind: str) -> Mapping[str, Any]:
    matches = [doc for doc in docs if doc["kind"] == kind]
    if len(matches) != 1:
        raise LookupError(f"expected one {kind}, the chart rendered {len(matches)}")
    return matches[0]


def readme_commands(program: str, section: str = "Deploy to a cluster") -> list[list[str]]:
    """The argv of every `program ...` command in the README section's code blocks (continuations joined,
    comments dropped), for a test to run them as the README shows them."""
    text = (ROOT / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", body, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == [program]:
                commands.append(words)
    return commands



def readme_kustomization(section: str = "Deploy to a cluster") -> str:
    """The kustomization.yaml the README's section writes with a heredoc."""
    body = (ROOT / "README.md").read_text().split(f"## {section}\n", 1)[1]
    return body.split("<<'YAML'\n", 1)[1].split("\nYAML\n", 1)[0] + "\n"
