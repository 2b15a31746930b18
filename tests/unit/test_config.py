import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cni.config import PluginConfig, parse_config
from cni.errors import CniError


@pytest.mark.parametrize(("conf", "expected"), [
    ({}, PluginConfig()),
    ({"debug": True}, PluginConfig(log_level="debug")),
    ({"logLevel": "WARN"}, PluginConfig(log_level="warn")),
    ({"logFilePath": "/x.log", "unknownKey": {"a": 1}}, PluginConfig(log_file_path="/x.log")),
    ({"kubernetes": {"kubeconfig": "/k", "excludeNamespaces": []}},
     PluginConfig(kubeconfig="/k", exclude_namespaces=())),
    ({"kubernetes": {"apiDeadlineSeconds": 2}}, PluginConfig(api_deadline_seconds=2.0)),
    ({"enginePort": 14000, "engineOwnPorts": [1, 2], "istioProxyUid": 2000},
     PluginConfig(engine_port=14000, engine_own_ports=(1, 2), istio_proxy_uid=2000)),
    ({"nonTCPInbound": "allow"}, PluginConfig(non_tcp_inbound="allow")),
    ({"nonTCPInbound": "drop"}, PluginConfig()),
    ({"netfilterBackend": "nftables"}, PluginConfig(netfilter_backend="nftables")),
    ({"netfilterBackend": "iptables-legacy"}, PluginConfig(netfilter_backend="iptables-legacy")),
    ({"netfilterBackend": "auto"}, PluginConfig()),
])
def test_valid(conf, expected):
    assert parse_config(conf) == expected


@pytest.mark.parametrize(("conf", "key"), [
    ({"logLevel": "loud"}, "logLevel"),
    ({"debug": "yes"}, "debug"),
    ({"logFilePath": 3}, "logFilePath"),
    ({"kubernetes": []}, "kubernetes"),
    ({"kubernetes": {"excludeNamespaces": "kube-system"}}, "kubernetes.excludeNamespaces"),
    ({"kubernetes": {"apiDeadlineSeconds": 0}}, "kubernetes.apiDeadlineSeconds"),
    ({"kubernetes": {"apiDeadlineSeconds": True}}, "kubernetes.apiDeadlineSeconds"),
    ({"enginePort": 0}, "enginePort"),
    ({"enginePort": 70000}, "enginePort"),
    ({"enginePort": "13378"}, "enginePort"),
    ({"enginePort": True}, "enginePort"),
    ({"engineOwnPorts": [13378]}, "engineOwnPorts"),
    ({"istioPorts": "15000"}, "istioPorts"),
    ({"istioProxyUid": 0}, "istioProxyUid"),
    ({"nonTCPInbound": "reject"}, "nonTCPInbound"),
    ({"nonTCPInbound": "DROP"}, "nonTCPInbound"),
    ({"nonTCPInbound": False}, "nonTCPInbound"),
    ({"nonTCPInbound": ["drop"]}, "nonTCPInbound"),
    ({"netfilterBackend": "iptables-nft"}, "netfilterBackend"),
    ({"netfilterBackend": ["nftables"]}, "netfilterBackend"),
])
def test_invalid_names_key_and_value(conf, key):
    with pytest.raises(CniError) as err:
        parse_config(conf)
    assert err.value.code == 7
    assert repr(key) in err.value.msg


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
config_keys = st.sampled_from(["logLevel", "debug", "logFilePath", "kubernetes", "enginePort", "engineOwnPorts",
                               "validationPort", "istioProxyUid", "istioPorts", "netfilterBackend", "other"])


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.dictionaries(config_keys, json_values, max_size=6))
def test_parser_only_returns_config_or_cni_error(conf):
    try:
        config = parse_config(conf)
    except CniError as err:
        assert err.code == 7
        assert "invalid value for" in err.msg
    else:
        assert 1 <= config.engine_port <= 65535
        assert config.log_level in ("debug", "info", "warn", "error")
