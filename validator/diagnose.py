"""`diagnose`: explain *why* a pod's redirection does not work. Run by a person with NET_ADMIN inside
the pod's netns (kubectl debug). Never on the init-container path: scapy is a heavy import.
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, Any

from cni.contract import LOOPBACK
from cni.model import Live
from cni.rules import CATCH_ALL_DROP, FILTER, MGW_INBOUND, MGW_INPUT, MGW_OUTPUT, MGW_PREROUTING, NAT

if TYPE_CHECKING:
    from cni.netfilter.backend import Backend

    Found = list[tuple[Backend, Live]]

def shown(lives: Found, table: str, with_jumps: bool) -> list[str]:
    """Each backend's rules (and jumps) of one table in its own syntax, then what it could not read."""
    return ([reader.syntax(r, live.family, table) for reader, live in lives
             for r in ((*live.jumps, *live.rules) if with_jumps else live.rules)]
            + [f"{f.text}  [unexpected: {f.reason}]" for _, live in lives for f in live.foreign])


def guard_report(lives: Found) -> dict[str, Any]:
    """Our filter-table guard of one family, in whichever backends hold it, and what non-TCP inbound
    meets (I7)."""
    rules = [rule for _, live in lives for rule in live.rules]
    jumped = any(j.target == MGW_INPUT for _, live in lives for j in live.jumps)
    if not jumped or not any(MGW_INPUT in live.chains for _, live in lives):
        non_tcp = "missing"
    else:
        non_tcp = "drop" if rules and rules[-1] == CATCH_ALL_DROP else "allow"
    return {"rules": shown(lives, FILTER, with_jumps=True), "non_tcp": non_tcp}


def chain_report(families: list[int], engine_port: int) -> dict[int, dict[str, Any]]:
    """Our nat chains and jumps and our filter guard per family, read through the plugin's own backends -
    both of them, as a node may have switched - and shown in the syntax of the backend that holds them."""
    from cni.netfilter.backend import NAMES
    from cni.netfilter.choice import load

    found: dict[tuple[int, str], Found] = {(family, table): [] for family in families for table in (NAT, FILTER)}
    for name in NAMES:
        reader = load(name)
        for live in reader.read(families, (NAT, FILTER)):
            if live.chains or live.jumps or live.foreign:
                found[live.family, live.table].append((reader, live))
    report: dict[int, dict[str, Any]] = {}
    for family in families:
        lives = found[family, NAT]
        rules = [rule for _, live in lives for rule in live.rules]
        jumps = [jump for _, live in lives for jump in live.jumps]
        unrestricted_output = [r.render() for r in rules
                               if r.chain == MGW_OUTPUT and r.dport is None and r.uid_owner is None]
        report[family] = {
            "backends": [reader.name for reader, _ in lives],
            "chains": sorted({chain for _, live in lives for chain in live.chains}),
            "rules": shown(lives, NAT, with_jumps=False),
            "prerouting_jump": any(j.target == MGW_PREROUTING for j in jumps),
            "output_jump": any(j.target == MGW_OUTPUT for j in jumps),
            "redirects_to_engine": any(r.chain == MGW_INBOUND and r.target == "REDIRECT" and r.to_port == engine_port
                                       for r in rules),
            "unrestricted_output": unrestricted_output,
            "istio_mode": any(r.uid_owner is not None for r in rules),
            "guard": guard_report(found[family, FILTER]),
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
    packets: list[Any] = sniffer.stop() or []
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
    """Which of I1-I4 and I7 look broken, from the rules and the traced probe; a finding that is not
    broken starts with "ok". Pure."""
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
        non_tcp = info["guard"]["non_tcp"]
        if non_tcp == "missing":
            findings.setdefault("I7", f"{where}: no {MGW_INPUT} guard in the filter table: UDP, SCTP and every other "
                                      "non-TCP protocol reach the application unfiltered")
        elif non_tcp == "allow":
            findings.setdefault("I7", f"ok ({where}: nonTCPInbound allow - non-TCP inbound reaches the "
                                      "application without the Engine, as configured)")
        trace = traces.get(family)
        if trace and trace["syn_dport"] != engine_port:
            findings.setdefault("I4", f"{where}: {trace['verdict']}")
    istio = [f for f, info in chains.items() if info["istio_mode"]]
    if istio and any(not chains[f]["output_jump"] for f in istio):
        findings["I2"] = "istio mode but OUTPUT does not jump to MGW_OUTPUT: Istio's connections bypass the Engine"
    for name in ("I1", "I2", "I3", "I4", "I7"):
        findings.setdefault(name, "ok")
    return findings
