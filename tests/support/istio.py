"""Istio's REDIRECT-mode nat rules as `istio-iptables` writes them in a pod, for fixtures
(docs/design.md, "Istio fixture")."""

from __future__ import annotations

from tests.support.node import Node, Pod

LOOPBACK = {4: "127.0.0.1/32", 6: "::1/128"}
PASSTHROUGH = {4: "127.0.0.6/32", 6: "::6/128"}


def istio_rules(family: int, exclude_inbound: tuple[int, ...] = ()) -> str:
    lo, passthrough = LOOPBACK[family], PASSTHROUGH[family]
    lines = ["*nat", ":ISTIO_INBOUND - [0:0]", ":ISTIO_REDIRECT - [0:0]", ":ISTIO_IN_REDIRECT - [0:0]",
             ":ISTIO_OUTPUT - [0:0]",
             "-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN",
             "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
             "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
             "-A PREROUTING -p tcp -j ISTIO_INBOUND"]
    lines += [f"-A ISTIO_INBOUND -p tcp --dport {port} -j RETURN" for port in (15020, 15021, 15090, *exclude_inbound)]
    lines += ["-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
              "-A OUTPUT -j ISTIO_OUTPUT",
              f"-A ISTIO_OUTPUT -o lo -s {passthrough} -j RETURN"]
    for owner in ("uid-owner", "gid-owner"):
        lines += [f"-A ISTIO_OUTPUT -o lo ! -d {lo} -p tcp ! --dport 15008 -m owner --{owner} 1337"
                  " -j ISTIO_IN_REDIRECT",
                  f"-A ISTIO_OUTPUT -o lo -m owner ! --{owner} 1337 -j RETURN",
                  f"-A ISTIO_OUTPUT -m owner --{owner} 1337 -j RETURN"]
    lines += [f"-A ISTIO_OUTPUT -d {lo} -j RETURN", "-A ISTIO_OUTPUT -j ISTIO_REDIRECT", "COMMIT", ""]
    return "\n".join(lines)


def istio_nft_rules(families: tuple[int, ...], exclude_inbound: tuple[int, ...] = ()) -> str:
    """Istio's native nftables mode (istio-nftables, Istio >= 1.27) for REDIRECT, inbound and outbound
    `*`: one inet table at the nat hooks' dstnat priority, the same decisions as istio_rules, as an
    `nft -f` script in the form Istio's capture golden files take."""
    table = "inet istio-proxy-nat"
    ip = {4: "ip", 6: "ip6"}
    lines = [f"add table {table}",
             f"add chain {table} prerouting {{ type nat hook prerouting priority -100 ; }}",
             f"add chain {table} output {{ type nat hook output priority -100 ; }}",
             *(f"add chain {table} {chain}" for chain in ("istio-inbound", "istio-redirect", "istio-in-redirect",
                                                           "istio-output")),
             f"add rule {table} istio-inbound meta l4proto tcp tcp dport 15008 return",
             f"add rule {table} istio-redirect meta l4proto tcp redirect to :15001",
             f"add rule {table} istio-in-redirect meta l4proto tcp redirect to :15006",
             f"add rule {table} prerouting meta l4proto tcp jump istio-inbound"]
    lines += [f"add rule {table} istio-inbound meta l4proto tcp tcp dport {port} return"
              for port in (15020, 15021, 15090, *exclude_inbound)]
    lines += [f"add rule {table} istio-inbound meta l4proto tcp jump istio-in-redirect",
              f"add rule {table} output jump istio-output"]
    lines += [f"add rule {table} istio-output oifname lo {ip[f]} saddr {PASSTHROUGH[f]} return" for f in families]
    for owner in ("skuid", "skgid"):
        lines += [f"add rule {table} istio-output oifname lo meta l4proto tcp {ip[f]} daddr != {LOOPBACK[f]}"
                  f" tcp dport != 15008 {owner} 1337 jump istio-in-redirect" for f in families]
        lines += [f"add rule {table} istio-output oifname lo {owner} != 1337 return",
                  f"add rule {table} istio-output {owner} 1337 return"]
    lines += [f"add rule {table} istio-output {ip[f]} daddr {LOOPBACK[f]} return" for f in families]
    lines += [f"add rule {table} istio-output jump istio-redirect", ""]
    return "\n".join(lines)


def write_istio(node: Node, pod: Pod, istio_backend: str) -> None:
    """Write Istio's rules into the pod as istio-init would: with iptables-legacy ("legacy"),
    iptables-nft ("nft") or Istio's native nftables mode ("native-nft"), excluding inbound port 9090."""
    if istio_backend == "native-nft":
        node.exec(pod.netns, ["nft", "-f", "-"], input=istio_nft_rules(node.families, exclude_inbound=(9090,)))
        return
    for family in node.families:
        tool = ("iptables" if family == 4 else "ip6tables") + f"-{istio_backend}-restore"
        node.exec(pod.netns, [tool, "--noflush"], input=istio_rules(family, exclude_inbound=(9090,)))
