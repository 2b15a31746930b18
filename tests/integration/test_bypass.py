"""An attacker in a neighbouring pod tries every way around the Engine (I1, I7; docs/design.md).

Against a protected pod whose application listens on TCP and UDP on every attacked port (and is
watched by raw sockets for SCTP, DCCP, UDP-Lite and an unassigned protocol), in each mesh mode, on an
IPv4-only node (where the pod still has a link-local IPv6 address) and on a dual-stack node:
- TCP to 2,000 random ports plus the well-known ones, at the pod's IPv4, global IPv6 and link-local
  IPv6 address: every connection lands on the Engine, except the documented exemptions (excluded
  ports, the Engine's own ports, Istio's ports in istio mode);
- UDP and SCTP to the same ports, the other protocols to a sample: nothing reaches the pod but the
  UDP ports it allows;
- from inside the pod: its own DNS lookups and outbound UDP work; hairpin traffic to its own IP and
  the Engine's connections reach the application directly; the validator's probe lands on the Engine.
Every attempt that got through is named in the failure message. MGW_BYPASS_SEED repeats a run's ports.
"""

from __future__ import annotations

import os
import random
import re
import sys
import time
from typing import Any

import pytest

from tests.support.attacks import ProgramOutput, attack
from tests.support.istio import write_istio
from tests.support.node import APP_UID, ENGINE_UID, ISTIO_UID, VALIDATOR_UID, Node, Pod, pod_fixture
from tests.support.pods import client_pod
from tests.support.programs.resolver import ANSWER_V4, ANSWER_V6

PREFIX = "sidecar.microgateway.airlock.com/"
ENGINE_PORT, ENGINE_OWN = 13378, {19000, 19001, 19002}
ISTIO_PORTS = {15000, 15001, 15004, 15006, 15008, 15009, 15020, 15021, 15053, 15090}
EXCLUDED_TCP, ALLOWED_UDP = 8081, (5353, 9000)
ISTIO_EXCLUDE, ISTIO_UNCAPTURED = "traffic.sidecar.istio.io/excludeInboundPorts", 9090  # as write_istio has it
NOTABLE = {1080, 1194, 1433, 1883, 2049, 2375, 3000, 3306, 3478, 4433, 4443, 5000, 5060, 5353, 5432, 6379,
           8000, 8008, 8080, 8081, 8443, 8888, 9000, 9090, 9200, 9443, 10250, 11211, 13378, 27017, 51820,
           65535, *ENGINE_OWN, 19003, *ISTIO_PORTS}
SCTP, DCCP, UDPLITE, UNASSIGNED = 132, 33, 136, 253
OTHER_PROTOCOLS = {DCCP: "dccp", UDPLITE: "udplite", UNASSIGNED: "proto253"}
SAMPLE = (53, 80, 443, 3478, 5060, 8080, 8443, 13378, *ALLOWED_UDP)
INSIDE_IDS = 10**7  # attempt ids from inside the pod, apart from the attack's


def attacked_ports(seed: int) -> list[int]:
    rng = random.Random(seed)
    return sorted({*range(1, 1024), *NOTABLE, *rng.sample(range(1024, 65536), 2000)})


def link_local(node: Node, pod: Pod) -> str:
    out = node.exec(pod.netns, ["ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"]).stdout
    return out.split()[3].split("/")[0]


def lookup(node: Node, pod: Pod, nameserver: str, database: str) -> str:
    """glibc's own lookup in the pod, as the application's uid, with the resolver stand-in configured."""
    conf = node.dir / f"resolv-{pod.name}-{database}.conf"
    conf.write_text(f"nameserver {nameserver}\noptions attempts:1 timeout:3\n")
    conf.chmod(0o644)
    # `ip netns exec` runs in a mount namespace of its own: the bind mount goes away with it.
    script = (f"mount --bind {conf} /etc/resolv.conf && exec setpriv --reuid={APP_UID} --regid={APP_UID} "
              f"--clear-groups -- getent {database} app.mgw.test")
    return node.exec(pod.netns, ["sh", "-c", script], check=False).stdout


class Verdicts:
    """Attempts and what got through, per protocol and destination."""

    def __init__(self) -> None:
        self.attempts: dict[tuple[str, str], int] = {}
        self.bypasses: dict[str, str] = {}  # attempt id -> what got through
        self.missed: list[str] = []
        self.stopped_at_istio = 0
        self.dropped = 0

    def count(self, protocol: str, where: str) -> None:
        self.attempts[(protocol, where)] = self.attempts.get((protocol, where), 0) + 1

    def summary(self, case: str, seed: int) -> str:
        per = ", ".join(f"{protocol} {where}: {n}" for (protocol, where), n in sorted(self.attempts.items()))
        return f"bypass [{case}] seed {seed}: attempts {sum(self.attempts.values())} ({per}); " \
               f"bypasses found: {len(self.bypasses)}; missed the Engine: {len(self.missed)}; " \
               f"captured by Istio, which could not relay them: {self.stopped_at_istio}; " \
               f"dropped, no redirect covering them: {self.dropped}"


@pytest.mark.parametrize("mesh", ["none", "istio"])
@pytest.mark.parametrize("fixture_name", ["node", "node46"])
def test_no_way_around_the_engine(request, fixture_name, mesh):
    node: Node = request.getfixturevalue(fixture_name)
    seed = int(os.environ.get("MGW_BYPASS_SEED") or random.randrange(1 << 32))
    ports = attacked_ports(seed)
    annotations = {PREFIX + "serviceMesh": mesh, PREFIX + "excludeInboundPorts": str(EXCLUDED_TCP),
                   PREFIX + "allowInboundUDPPorts": ", ".join(map(str, ALLOWED_UDP)),
                   ISTIO_EXCLUDE: str(ISTIO_UNCAPTURED)}
    node.add_pod_fixture(pod_fixture("web", annotations=annotations))
    pod = node.new_pod("web", node.write_conflist())
    if mesh == "istio":  # istio-init runs after every CNI plugin
        write_istio(node, pod, "legacy")
    # Container runtimes open every port to unprivileged users inside a pod.
    node.exec(pod.netns, ["sysctl", "-qw", "net.ipv4.ip_unprivileged_port_start=0"])
    exempt = ENGINE_OWN | ({*ISTIO_PORTS} if mesh == "istio" else set())
    app = ProgramOutput(node.spawn(pod.netns, [
        sys.executable, "-m", "tests.support.programs.exposed", "app", "--name", "web",
        "--tcp-ports", ",".join(str(p) for p in ports if p not in exempt | {ENGINE_PORT}),
        "--udp-ports", ",".join(map(str, ports))], uid=APP_UID))
    observer = ProgramOutput(node.spawn(pod.netns, [sys.executable, "-m", "tests.support.programs.exposed", "observer",
                                             "--protocols", ",".join(map(str, [SCTP, *OTHER_PROTOCOLS]))]))
    node.spawn(pod.netns, [sys.executable, "-m", "tests.support.programs.standins", "engine", "--name", "web",
                           "--port", str(ENGINE_PORT), "--forward", "8080", "--families", "4,6"], uid=ENGINE_UID)
    if mesh == "istio":
        node.exec(pod.netns, ["ip", "-6", "addr", "add", "::6/128", "dev", "lo"])
        node.spawn(pod.netns, [sys.executable, "-m", "tests.support.programs.standins", "istio", "--name", "web",
                               "--port", "15006", "--families", "4,6"], uid=ISTIO_UID)
    client = client_pod(node)
    node.spawn(client.netns, [sys.executable, "-m", "tests.support.programs.resolver",
                              "--families", ",".join(map(str, node.families))])

    destinations = [("IPv4", pod.ip(4), "")]
    if 6 in node.families:
        destinations.append(("IPv6", pod.ip(6), ""))
    destinations.append(("IPv6-link-local", link_local(node, pod), "eth0"))
    # A dropped SYN costs the whole connect timeout: many at once, and 2 s leaves room for one
    # retransmission (the stand-ins' backlog is large enough that only the guard drops SYNs).
    plan: dict[str, Any] = {"tcp": [], "udp": [], "raw": [], "concurrency": 384, "timeout": 2.0}
    meaning: dict[str, tuple[str, str, int]] = {}
    for where, host, scope in destinations:
        for port in ports:
            for protocol in ("tcp", "udp", "sctp"):
                key = len(meaning)
                meaning[str(key)] = (protocol, where, port)
                if protocol == "sctp":
                    plan["raw"].append([key, SCTP, host, port, scope])
                else:
                    plan[protocol].append([key, host, port, scope])
        for number, protocol in OTHER_PROTOCOLS.items():
            for port in SAMPLE:
                key = len(meaning)
                meaning[str(key)] = (protocol, where, port)
                plan["raw"].append([key, number, host, port, scope])
    started = time.monotonic()
    replies = attack(node, client.netns, plan)
    attack_seconds = time.monotonic() - started

    # Positive controls: traffic from inside the pod (hairpin) reaches every listener and the raw
    # observer, so a listener that hears nothing from outside is not merely deaf.
    hairpin_raw = [[INSIDE_IDS + n, number, pod.ip(4), 443, ""] for n, number in enumerate([SCTP, *OTHER_PROTOCOLS])]
    attack(node, pod.netns, {"raw": hairpin_raw})
    missing = observer.wait_for({("raw", str(number), "4", str(key)) for key, number, *_ in hairpin_raw})
    assert not missing, f"the raw observer did not see the pod's own packets: {missing}"
    allowed = {("udp", "4" if where == "IPv4" else "6", str(port), key)
               for key, (protocol, where, port) in meaning.items() if protocol == "udp" and port in ALLOWED_UDP}
    missing = app.wait_for(allowed)
    assert not missing, f"allowed UDP ports did not reach the application: {missing}"
    time.sleep(0.3)  # stragglers of the attack, had any got through

    verdicts = Verdicts()

    def uncovered(where: str) -> bool:
        """IPv6 in istio mode on an IPv4-only node: Istio writes no IPv6 rules and leaves ours nothing to do."""
        return mesh == "istio" and where.startswith("IPv6") and 6 not in node.families
    for key, (protocol, where, port) in meaning.items():
        verdicts.count(protocol, where)
        if protocol == "tcp":
            reply = replies["tcp"][key]
            if port in exempt:
                continue
            if mesh == "istio" and reply.startswith("istio=web failed"):
                verdicts.stopped_at_istio += 1  # captured by Istio, which could not pass it on: not ours
            elif uncovered(where) and "TimeoutError" in reply:
                verdicts.dropped += 1  # neither Istio nor we redirect it: the guard drops it (I1)
            elif port == EXCLUDED_TCP:
                if not reply.endswith(f"app=web port={port}"):
                    verdicts.missed.append(f"tcp {where} :{port} (excluded) did not reach the app: {reply}")
            elif "app=" in reply and "engine=" not in reply:
                verdicts.bypasses[key] = f"tcp {where} :{port} -> {reply}"
            elif not re.fullmatch(rf"(istio=web -> )?engine=web orig={port}( -> app=web port={port})?", reply):
                verdicts.missed.append(f"tcp {where} :{port} -> {reply}")
        elif protocol == "udp" and port not in ALLOWED_UDP and key in replies["udp"]:
            verdicts.bypasses[key] = f"udp {where} :{port} answered: {replies['udp'][key]}"
    for line in app.lines:
        if line[0] == "udp" and line[3] in meaning and meaning[line[3]][2] not in ALLOWED_UDP:
            protocol, where, port = meaning[line[3]]
            verdicts.bypasses.setdefault(line[3], f"udp {where} :{port} received by the application")
    for line in observer.lines:
        if line[0] == "raw" and line[3] in meaning:
            protocol, where, port = meaning[line[3]]
            verdicts.bypasses[line[3]] = f"{protocol} {where} :{port} received by the pod (raw socket)"

    # From inside the pod, as the design says: DNS and outbound UDP work (replies are established
    # flows); hairpin and the Engine's own connections reach the app directly (I3, the threat model
    # trusts the pod's processes); the validator's probe lands on the Engine (I4).
    inside = []
    resolvers = [(client.ip(family), family) for family in node.families]
    for address, family in resolvers:
        database, expected = ("ahostsv4", ANSWER_V4) if family == 4 else ("ahostsv6", ANSWER_V6)
        answer = lookup(node, pod, address, database)
        if expected not in answer:
            inside.append(f"DNS lookup via {address} failed: {answer!r}")
    outbound = [[INSIDE_IDS + n, address, 7, ""] for n, (address, _) in enumerate(resolvers)]
    echo = attack(node, pod.netns, {"udp": outbound}, uid=APP_UID)["udp"]
    if len(echo) != len(resolvers) or not all(reply.startswith("MGWATK") for reply in echo.values()):
        inside.append(f"outbound UDP got no replies: {echo}")
    own = attack(node, pod.netns, {"udp": [[INSIDE_IDS, pod.ip(4), 8080, ""]], "linger": 0.5},
                 uid=APP_UID)["udp"]
    if own.get(str(INSIDE_IDS)) != "app=web udp port=8080":
        inside.append(f"hairpin UDP to the pod's own IP did not reach the app: {own}")
    expectations = {
        (APP_UID, f"{pod.ip(4)}:8080"): "app=web port=8080",
        (ENGINE_UID, f"{pod.ip(4)}:8080"): "app=web port=8080",
        (ENGINE_UID, "127.0.0.1:8080"): "app=web port=8080",
        (VALIDATOR_UID, "127.0.0.1:19003"): "engine=web orig=19003",
        (VALIDATOR_UID, "[::1]:19003"): "engine=web orig=19003",
    }
    if mesh == "istio":
        expectations[(ISTIO_UID, "127.0.0.1:8080")] = "engine=web orig=8080 -> app=web port=8080"
    for (uid, destination), expected in expectations.items():
        got = node.connect(pod.netns, [destination], uid=uid)[destination]
        if got != expected:
            inside.append(f"uid {uid} -> {destination}: {got!r}, expected {expected!r}")

    case = f"{mesh}, {'+'.join(where for where, _, _ in destinations)}"
    summary = verdicts.summary(case, seed) + f"; attack took {attack_seconds:.1f} s"
    print(summary)
    problems = ([f"BYPASS {b}" for b in verdicts.bypasses.values()] + [f"MISSED {m}" for m in verdicts.missed]
                + [f"INSIDE {i}" for i in inside])
    assert not problems, summary + "\n" + "\n".join(problems)
