import pytest

from cni.config import PluginConfig
from cni.policy import Plan
from cni.rules import MGW_INBOUND, MGW_OUTPUT, MGW_PREROUTING, Rule, build_guard, build_nat, build_rulesets, port_ranges

CONFIG = PluginConfig()


@pytest.mark.parametrize(("ports", "ranges"), [
    (set(), []), ({7}, ["7"]), ({1, 2, 3, 7}, ["1:3", "7"]), ({5, 9, 10}, ["5", "9:10"]),
])
def test_port_ranges(ports, ranges):
    assert port_ranges(ports) == ranges


def rules_of(ruleset, chain):
    return [r for r in ruleset.rules if r.chain == chain]


@pytest.mark.parametrize("family", [4, 6])
def test_no_mesh_redirects_everything_but_exempt_ports(family):
    rs = build_nat(Plan(excluded_ports=(8081, 9090)), CONFIG, family)
    assert [r.dport for r in rules_of(rs, MGW_INBOUND)] == ["8081", "9090", "13378", "19000:19002", None]
    assert rules_of(rs, MGW_INBOUND)[-1] == Rule(MGW_INBOUND, "REDIRECT", to_port=13378)
    assert rules_of(rs, MGW_PREROUTING) == [Rule(MGW_PREROUTING, MGW_INBOUND)]
    loopback = "127.0.0.1/32" if family == 4 else "::1/128"
    assert rules_of(rs, MGW_OUTPUT) == [Rule(MGW_OUTPUT, MGW_INBOUND, dst=loopback, out_iface="lo", dport="19003")]
    assert [(j.chain, j.target) for j in rs.jumps] == [("PREROUTING", MGW_PREROUTING), ("OUTPUT", MGW_OUTPUT)]


def test_istio_all_captured_only_uncaptured_ports_in_prerouting():
    rs = build_nat(Plan(mesh="istio", istio_exclude=(7070, 7071, 15020, 8081), excluded_ports=(8081,)),
                       CONFIG, 4)
    assert rules_of(rs, MGW_PREROUTING) == [Rule(MGW_PREROUTING, MGW_INBOUND, dport="7070:7071")]
    inbound_exempt = [r.dport for r in rules_of(rs, MGW_INBOUND) if r.target == "RETURN"]
    assert "15006" in inbound_exempt and "15020:15021" in inbound_exempt and "8081" in inbound_exempt
    assert rules_of(rs, MGW_OUTPUT)[1:] == [
        Rule(MGW_OUTPUT, MGW_INBOUND, src="127.0.0.6/32", out_iface="lo", uid_owner=1337),
        Rule(MGW_OUTPUT, MGW_INBOUND, dst="127.0.0.1/32", out_iface="lo", uid_owner=1337),
    ]


def test_istio_include_list_returns_captured_then_redirects_rest():
    rs = build_nat(Plan(mesh="istio", istio_include=(8080, 9090), istio_exclude=(9090,)), CONFIG, 6)
    assert rules_of(rs, MGW_PREROUTING) == [Rule(MGW_PREROUTING, "RETURN", dport="8080"),
                                            Rule(MGW_PREROUTING, MGW_INBOUND)]
    assert Rule(MGW_OUTPUT, MGW_INBOUND, src="::6/128", out_iface="lo", uid_owner=1337) in rs.rules


def test_istio_captures_nothing():
    rs = build_nat(Plan(mesh="istio", istio_include=()), CONFIG, 4)
    assert rules_of(rs, MGW_PREROUTING) == [Rule(MGW_PREROUTING, MGW_INBOUND)]


def test_config_overrides_ports_and_uid():
    config = PluginConfig(engine_port=14000, engine_own_ports=(14001,), validation_port=14003, istio_proxy_uid=4242)
    rs = build_nat(Plan(mesh="istio"), config, 4)
    assert rules_of(rs, MGW_INBOUND)[-1].to_port == 14000
    assert rules_of(rs, MGW_OUTPUT)[0].dport == "14003"
    assert {r.uid_owner for r in rules_of(rs, MGW_OUTPUT)} == {None, 4242}


def test_render_is_iptables_save_syntax():
    rule = Rule(MGW_OUTPUT, MGW_INBOUND, src="127.0.0.6/32", out_iface="lo", dport="80", uid_owner=1337)
    assert rule.render() == ("-A MGW_OUTPUT -s 127.0.0.6/32 -o lo -p tcp -m tcp --dport 80 "
                             "-m owner --uid-owner 1337 -j MGW_INBOUND")


def guard_lines(plan, family):
    return [rule.render() for rule in build_guard(plan, CONFIG, family).rules]


@pytest.mark.parametrize("family", [4, 6])
def test_guard_drops_non_tcp_and_tcp_that_no_redirect_took(family):
    icmp = "icmp" if family == 4 else "ipv6-icmp"
    assert guard_lines(Plan(excluded_ports=(8081,), allowed_udp_ports=(5353, 9000, 9001)), family) == [
        "-A MGW_INPUT -i lo -j RETURN",
        "-A MGW_INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        "-A MGW_INPUT -p tcp -m conntrack --ctstate DNAT -j RETURN",
        "-A MGW_INPUT -p tcp -m tcp --dport 8081 -j RETURN",
        "-A MGW_INPUT -p tcp -m tcp --dport 13378 -j RETURN",
        "-A MGW_INPUT -p tcp -m tcp --dport 19000:19002 -j RETURN",
        "-A MGW_INPUT -p tcp -j DROP",
        f"-A MGW_INPUT -p {icmp} -j RETURN",
        "-A MGW_INPUT -p udp -m udp --dport 5353 -j RETURN",
        "-A MGW_INPUT -p udp -m udp --dport 9000:9001 -j RETURN",
        "-A MGW_INPUT -j DROP",
    ]
    guard = build_guard(Plan(), CONFIG, family)
    assert (guard.table, guard.chains, [j.render() for j in guard.jumps]) == (
        "filter", ("MGW_INPUT",), ["-A INPUT -j MGW_INPUT"])


def test_guard_in_allow_mode_keeps_only_the_tcp_part():
    lines = guard_lines(Plan(non_tcp_inbound="allow", allowed_udp_ports=(5353,)), 4)
    assert lines[-1] == "-A MGW_INPUT -p tcp -j DROP"
    assert not any("udp" in line or "icmp" in line for line in lines)


def test_guard_exempts_istio_ports_in_istio_mode_only():
    none, istio = guard_lines(Plan(), 4), guard_lines(Plan(mesh="istio"), 4)
    assert "-A MGW_INPUT -p tcp -m tcp --dport 15000:15001 -j RETURN" in istio
    assert not any("1500" in line for line in none)


def test_rulesets_per_family_nat_then_filter():
    sets = build_rulesets(Plan(), CONFIG, [4, 6])
    assert [(rs.family, rs.table) for rs in sets] == [(4, "nat"), (4, "filter"), (6, "nat"), (6, "filter")]
