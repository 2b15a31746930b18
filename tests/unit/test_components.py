"""scripts/components/: go.mod, versions.txt and programs.txt agree, and tests.support.components finds
the binaries where scripts/components.sh puts them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.support import components

GO_MOD = components.SOURCE / "go.mod"
# versions.txt name -> the modules whose version go.mod must pin at exactly that version.
MODULES = {
    "kubernetes": ["k8s.io/kubernetes"],
    # etcd reports the version constant of its api module.
    "etcd": ["go.etcd.io/etcd/server/v3", "go.etcd.io/etcd/api/v3"],
    "containerd": ["github.com/containerd/containerd/v2"],
    "cni-plugins": ["github.com/containernetworking/plugins"],
    "cri-tools": ["sigs.k8s.io/cri-tools"],
    "helm": ["helm.sh/helm/v4"],
}


def _requires() -> dict[str, str]:
    """module -> version of every require line (in a block or alone)."""
    found = {}
    for line in GO_MOD.read_text().splitlines():
        fields = line.split()
        if fields[:1] == ["require"] and len(fields) >= 3:
            fields = fields[1:]
        if len(fields) >= 2 and fields[1].startswith("v"):
            found[fields[0]] = fields[1]
    return found


def _replaces() -> dict[str, str]:
    """old module -> "new module version" of every replace line."""
    pattern = r"^\s*(?:replace\s+)?(\S+(?: \S+)?) => (\S+) (\S+)\s*$"
    return {m.group(1): f"{m.group(2)} {m.group(3)}" for m in re.finditer(pattern, GO_MOD.read_text(), re.M)}


def _tools() -> list[str]:
    block = re.search(r"^tool \((.*?)^\)", GO_MOD.read_text(), re.M | re.S)
    assert block, "go.mod has no tool block"
    return block.group(1).split()


def test_every_component_has_a_version() -> None:
    assert set(components.versions()) == {*MODULES, "runc"}


def test_go_mod_pins_what_versions_txt_says() -> None:
    requires = _requires()
    wrong = {module: (requires.get(module), version)
             for name, version in components.versions().items() for module in MODULES.get(name, [])
             if requires.get(module) != version}
    assert not wrong, f"go.mod pins (left) differ from versions.txt (right): {wrong}"


def test_kubernetes_staging_modules_come_at_the_matching_release() -> None:
    kubernetes = components.versions()["kubernetes"]
    staging = "v0." + kubernetes.removeprefix("v1.")
    replaces = _replaces()
    assert replaces, "go.mod replaces no staging module"
    wrong = {old: new for old, new in replaces.items() if new != f"{old} {staging}"}
    assert not wrong, f"k8s.io/kubernetes {kubernetes} needs its staging modules at {staging}: {wrong}"
    # A replace without a version on its left applies to every version MVS selects (containerd and
    # cri-tools require some staging modules at older patch releases): the build uses `staging`.
    assert not [old for old in replaces if " " in old], "a replace names the version it replaces"


def test_programs_are_the_go_mod_tools() -> None:
    assert sorted(components.programs().values()) == sorted(_tools())


def test_key_is_the_one_the_script_computes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(components.CACHE_OVERRIDE, str(tmp_path))
    printed = subprocess.run(["bash", str(components.SCRIPT), "--print-dir"], capture_output=True, text=True,
                             check=True).stdout.strip()
    assert printed == str(tmp_path / components.key() / "bin") == str(components.bin_dir())


def test_binary_is_found_in_the_override_then_in_a_complete_cache(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(components.CACHE_OVERRIDE, str(tmp_path / "cache"))
    monkeypatch.delenv(components.BIN_OVERRIDE, raising=False)
    built = components.bin_dir()
    built.mkdir(parents=True)
    (built / "kubelet").write_text("")
    (built / "kubelet").chmod(0o755)
    with pytest.raises(FileNotFoundError, match=r"bash scripts/setup\.sh"):
        components.binary("kubelet")  # the build did not finish
    (built.parent / "complete").touch()
    assert components.binary("kubelet") == str(built / "kubelet")
    override = tmp_path / "override"
    override.mkdir()
    (override / "kubelet").write_text("")
    (override / "kubelet").chmod(0o755)
    monkeypatch.setenv(components.BIN_OVERRIDE, str(override))
    assert components.binary("kubelet") == str(override / "kubelet")
    with pytest.raises(FileNotFoundError, match=r"kubectl.*bash scripts/setup\.sh"):
        components.binary("kubectl")


def test_binary_refuses_unknown_names() -> None:
    with pytest.raises(ValueError, match="kube-apiserver"):
        components.binary("kube-apiservr")
