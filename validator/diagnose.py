"""`diagnose`: explain *why* a pod's redirection does not work. Run by a person with NET_ADMIN inside
the pod's netns (kubectl debug). Never on the init-container path: scapy alone takes ~1 s to import.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from cni.rules import INBOUND, OUTPUT, PREROUTING, Rule

LOOPBACK = {4: "127.0.0.1", 6: "::1"}


def _live_rules(families: list[int]) -> dict[int, dict[str, tuple[list[Any], list[Any]]]]:
    """Per family and backend, our chains' rules and the jumps into them: the legacy nat table (read
    only where it already exists, so diagnose never creates it) and our nft tables."""
    from cni import netfilter, nftables
    from cni.netns import legacy_nat_loaded

    loaded = [family for family in families if legacy_nat_loaded(family)]
    legacy = netfilter.read_families(loaded) if loaded else {}
    native = nftables.read(families)
    found: dict[int, dict[str, tuple[list[Any], list[Any]]]] = {family: {} for family in families}
    for family in families:
        for backend, live in (("iptables-legacy", legacy), ("nftables", native)):
            rules, jumps = live.get(family, ([], []))
            if rules or jumps:
                found[family][backend] = (rules, jumps)
    return found


def _render(backend: str, rule: Rule | str, family: int) -> str:
    from cni import nftables

    if isinstance(rule, str):
        return rule
    return rule.render() if backend == "iptables-legacy" else nftables.describe(rule, family)


def chain_report(families: list[int], engine_port: int) -> dict[int, dict[str, Any]]:
    """Our chains and jumps per family, from whichever backend holds them (both, after a switch)."""
    report: dict[int, dict[str, Any]] = {}
    for family, backends in _live_rules(families).items():
        rules = [(backend, r) for backend, (live, _) in backends.items() for r in live]
        jumps = [j for _, (_, live) in backends.items() for j in live]
        decoded = [r for _, r in rules if isinstance(r, Rule)]
        # A chain may be empty (Istio capturing every port leaves MGW_PREROUTING so); jumps prove it exists.
        chains = sorted({r.chain for r in decoded} | {j.target for j in jumps if isinstance(j, Rule)})
        redirect = any(r.chain == INBOUND and r.target == "REDIRECT" and r.to_port == engine_port for r in decoded)
        unrestricted_output = [r.render() for r in decoded
                               if r.chain == OUTPUT and r.dport is None and r.uid_owner is None]
        report[family] = {
            "backends": sorted(backends),
            "chains": chains,
            "rules": [_render(backend, r, family) for backend, r in rules],
            "prerouting_jump": any(isinstance(j, Rule) and j.target == PREROUTING for j in jumps),
            "output_jump": any(isinstance(j, Rule) and j.target == OUTPUT for j in jumps),
            "redirects_to_engine": redirect,
            "unrestricted_output": unrestricted_output,
            "istio_mode": any(isinstance(r, Rule) and r.uid_owner is not None for r in decoded),
        }
    return report


def trace_probe(family: int, validation_port: int, engine_port: int, timeout: float = 1.0) -> dict[str, Any]:
    """Connect to the validation port while sniffing lo: was the SYN redirected, reset or dropped?

    Capture on lo happens after OUTPUT NAT, so the SYN's destination port shows the redirect.
    """
    from scapy.all import TCP, AsyncSniffer

    ports = {validation_port, engine_port}

    def relevant(packet: Any) -> bool:
        return TCP in packet and (packet[TCP].dport in ports or packet[TCP].sport in ports)

    sniffer = AsyncSniffer(iface="lo", lfilter=relevant, store=True)
    sniffer.start()
    time.sleep(0.3)  # let the capture socket attach
    outcome = ""
    with socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((LOOPBACK[family], validation_port))
            outcome = "connected"
        except ConnectionRefusedError:
            outcome = "refused"
        except TimeoutError:
            outcome = "timeout"
        except OSError as exc:
            outcome = f"error: {exc}"
    time.sleep(0.2)
    packets = sniffer.stop() or []
    syns = [p[TCP] for p in packets if p[TCP].flags == "S"]
    replies = [p[TCP] for p in packets if p[TCP].flags in ("SA", "RA", "R")]
    syn_port = syns[0].dport if syns else None
    reply = str(replies[0].flags) if replies else None
    if syn_port is None:
        verdict = "no SYN seen on lo (capture failed or the packet never left the socket)"
    elif syn_port == engine_port:
        verdict = f"redirected to :{engine_port}" + ("" if reply == "SA" else f", but answered {reply or 'nothing'}: "
                                                     "no listener on the Engine port")
    elif reply in ("RA", "R"):
        verdict = f"not redirected: the SYN kept port {syn_port} and was reset (no rule, nothing listening)"
    elif reply is None:
        verdict = f"not redirected and dropped: no answer to the SYN for port {syn_port}"
    else:
        verdict = f"not redirected: port {syn_port} answered by another listener"
    return {"family": family, "connect": outcome, "syn_dport": syn_port, "reply": reply, "verdict": verdict}


def invariants(chains: dict[int, dict[str, Any]], traces: dict[int, dict[str, Any]],
               engine_port: int) -> dict[str, str]:
    """Which of I1-I4 look broken, from the rules and the traced probe. Pure."""
    findings: dict[str, str] = {}
    for family, info in chains.items():
        where = f"IPv{family}"
        if not info["chains"]:
            findings.setdefault("I1", f"{where}: no MGW_ chains at all - the plugin did not run for this pod")
        elif not (info["prerouting_jump"] and info["redirects_to_engine"]):
            findings.setdefault("I1", f"{where}: PREROUTING does not reach a REDIRECT to :{engine_port}")
        if info["unrestricted_output"]:
            findings.setdefault("I3", f"{where}: OUTPUT redirects without port/uid restriction (Engine loop): "
                                + "; ".join(info["unrestricted_output"]))
        trace = traces.get(family)
        if trace and trace["syn_dport"] != engine_port:
            findings.setdefault("I4", f"{where}: {trace['verdict']}")
    istio = [f for f, info in chains.items() if info["istio_mode"]]
    if istio and any(not chains[f]["output_jump"] for f in istio):
        findings["I2"] = "istio mode but OUTPUT does not jump to MGW_OUTPUT: Istio's connections bypass the Engine"
    for name in ("I1", "I2", "I3", "I4"):
        findings.setdefault(name, "ok")
    return findings
