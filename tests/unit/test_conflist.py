import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from daemonset import conflist
from daemonset.settings import ENV, Settings, SettingsError, from_env

INSTALLER = os.path.join(os.path.dirname(sys.executable), "microgateway-cni-installer")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cni"
ENTRY = Settings().plugin_entry()


def load(*names):
    return {name: (FIXTURES / name).read_bytes() for name in names}


@pytest.mark.parametrize(("files", "chosen"), [
    (["10-calico.conflist"], "10-calico.conflist"),
    (["00-invalid.conflist", "10-flannel.conflist"], "10-flannel.conflist"),
    (["10-weave.conflist", "05-cilium.conflist"], "05-cilium.conflist"),
    (["10-bridge.conf", "10-kindnet.conflist"], "10-bridge.conf"),
    (["00-invalid.conflist"], None),
    ([], None),
])
def test_choose_primary_like_libcni(files, chosen):
    primary = conflist.choose_primary(load(*files))
    assert (primary.name if primary else None) == chosen


def test_non_config_extensions_and_own_standalone_are_ignored():
    files = {"99-a.conflist.bak": b"{}", conflist.STANDALONE_NAME: conflist.render(conflist.standalone(ENTRY)),
             **load("10-flannel.conflist")}
    assert conflist.choose_primary(files).name == "10-flannel.conflist"


@pytest.mark.parametrize("name", ["10-calico.conflist", "10-flannel.conflist", "05-cilium.conflist",
                                  "10-kindnet.conflist", "10-weave.conflist"])
def test_insert_last_once_and_keep_everything(name):
    original = json.loads((FIXTURES / name).read_bytes())
    primary = conflist.choose_primary(load(name))
    chained = conflist.with_entry(primary.document, ENTRY)
    assert chained["plugins"][-1] == ENTRY and chained["plugins"][:-1] == original["plugins"]
    assert chained["cniVersion"] == original["cniVersion"]
    assert {k: v for k, v in chained.items() if k != "plugins"} == {k: v for k, v in original.items() if k != "plugins"}
    again = conflist.with_entry(chained, ENTRY)
    assert again == chained and conflist.is_chained(again, ENTRY)
    assert conflist.without_entry(chained) == original


def test_single_plugin_conf_becomes_conflist():
    primary = conflist.choose_primary(load("10-bridge.conf"))
    original = json.loads((FIXTURES / "10-bridge.conf").read_bytes())
    assert primary.was_single and conflist.target_name(primary) == "10-bridge.conflist"
    doc = conflist.with_entry(primary.document, ENTRY)
    assert doc["cniVersion"] == "0.4.0" and doc["name"] == "bridge"
    assert {**doc["plugins"][0], "cniVersion": "0.4.0", "name": "bridge"} == original


def test_changed_entry_replaces_old_one():
    primary = conflist.choose_primary(load("10-flannel.conflist"))
    old = conflist.with_entry(primary.document, {**ENTRY, "logLevel": "debug"})
    assert not conflist.is_chained(old, ENTRY)
    assert [p["type"] for p in conflist.with_entry(old, ENTRY)["plugins"]].count("microgateway-cni") == 1


def test_settings_from_env():
    settings = from_env({"MGW_MODE": "standalone", "MGW_EXCLUDE_NAMESPACES": "kube-system, istio-system",
                         "KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443",
                         "MGW_LOG_LEVEL": "debug", "NODE_NAME": "n1"})
    assert settings.mode == "standalone" and settings.api_server == "https://[fd00::1]:443"
    assert settings.plugin_entry()["kubernetes"]["excludeNamespaces"] == ["kube-system", "istio-system"]
    assert settings.plugin_entry()["logLevel"] == "debug"
    assert settings.plugin_entry()["netfilterBackend"] == "auto"
    assert from_env({"MGW_NETFILTER_BACKEND": "nftables"}).plugin_entry()["netfilterBackend"] == "nftables"
    assert settings.plugin_entry()["nonTCPInbound"] == "drop"
    assert from_env({"MGW_NON_TCP_INBOUND": "allow"}).plugin_entry()["nonTCPInbound"] == "allow"


@pytest.mark.parametrize(("env", "name"), [
    ({"MGW_MODE": "auto"}, "MGW_MODE"), ({"MGW_REPAIR_MODE": "kill"}, "MGW_REPAIR_MODE"),
    ({"MGW_LOG_LEVEL": "loud"}, "MGW_LOG_LEVEL"), ({"MGW_LISTEN_PORT": "http"}, "MGW_LISTEN_PORT"),
    ({"MGW_LISTEN_PORT": "\u00b2"}, "MGW_LISTEN_PORT"), ({"MGW_LISTEN_PORT": "65536"}, "a port 1-65535"),
    ({"MGW_REVERT_WARNING_THRESHOLD": "0"}, "MGW_REVERT_WARNING_THRESHOLD"),
    ({"MGW_NETFILTER_BACKEND": "iptables-nft"}, "MGW_NETFILTER_BACKEND"),
    ({"MGW_NON_TCP_INBOUND": "reject"}, "MGW_NON_TCP_INBOUND"),
])
def test_invalid_settings_name_the_variable(env, name):
    with pytest.raises(SettingsError, match=name):
        from_env(env)


def test_a_revert_threshold_above_any_port_number_is_valid():
    assert from_env({"MGW_REVERT_WARNING_THRESHOLD": "60000"}).revert_warning_threshold == 60000
    assert from_env({"MGW_REVERT_WARNING_THRESHOLD": "100000"}).revert_warning_threshold == 100000


class RecordingEnv(Mapping[str, str]):
    """An empty environment that remembers every variable asked for."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.asked.add(name)
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def test_help_lists_every_setting_the_installer_reads_with_its_default():
    env = RecordingEnv()
    defaults = from_env(env)
    shown = subprocess.run([INSTALLER, "--help"], capture_output=True, text=True, check=True).stdout
    listed = dict(re.findall(r"^\s+([A-Z_]+) \(default: ([^)]*)\)$", shown, re.MULTILINE))
    assert env.asked and env.asked <= set(listed), env.asked - set(listed)
    assert listed["MGW_REVERT_WARNING_THRESHOLD"] == str(defaults.revert_warning_threshold) == "5"
    assert listed["MGW_LISTEN_PORT"] == "8000" and listed["MGW_EXCLUDE_NAMESPACES"] == "kube-system"
    for name, attr in ENV.items():
        assert listed[name] == (str(getattr(defaults, attr)) or "unset"), name


@pytest.mark.parametrize(("name", "loaded_first"), [
    ("10-calico.conflist", True),
    ("05-cilium.conflist", True),
    ("00-multus.conf", True),
    ("00-calico.conflist", False),  # sorts before 00-microgateway-cni.conflist: libcni would load it first
    ("00-microgateway-a.conflist", False),
    ("000-first.conflist", True),  # "-" sorts before "0"
    ("00-0-first.conflist", False),
])
def test_ahead_copy_only_where_libcni_loads_it_first(name, loaded_first):
    primary = conflist.parse(name, (FIXTURES / "10-calico.conflist").read_bytes())
    document = conflist.ahead(primary, ENTRY)
    assert (document is not None) == loaded_first
    assert sorted([name, conflist.AHEAD_NAME])[0] == (conflist.AHEAD_NAME if loaded_first else name)
    if document is not None:
        assert document == conflist.with_entry(primary.document, ENTRY)


def test_ahead_copy_of_a_single_plugin_conf_and_of_a_chained_primary():
    single = conflist.choose_primary(load("10-bridge.conf"))
    document = conflist.ahead(single, ENTRY)
    original = json.loads((FIXTURES / "10-bridge.conf").read_bytes())
    assert document["name"] == "bridge" and document["cniVersion"] == "0.4.0"
    assert document["plugins"] == [{k: v for k, v in original.items() if k not in ("name", "cniVersion")}, ENTRY]
    stale = {**ENTRY, "logLevel": "debug"}  # left in the primary by chained mode, with an older entry
    chained = conflist.parse("10-calico.conflist", conflist.render(conflist.with_entry(
        conflist.choose_primary(load("10-calico.conflist")).document, stale)))
    assert conflist.is_chained(conflist.ahead(chained, ENTRY), ENTRY)


def test_own_files_are_never_the_primary():
    files = {conflist.AHEAD_NAME: conflist.render(conflist.standalone(ENTRY)),
             conflist.STANDALONE_NAME: conflist.render(conflist.standalone(ENTRY)), **load("10-calico.conflist")}
    assert conflist.choose_primary(files).name == "10-calico.conflist"
