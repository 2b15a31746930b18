"""microgateway-network-validator: the first init container of a protected pod.

Exit codes (DESIGN §2): 0 redirection works, 3 redirection not working, 2 usage/config, 1 internal.
"""

from __future__ import annotations

import json
import sys
import time

import click

from validator.probe import PortInUse, ProbeResult, ipv6_loopback_present, probe_families

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_NOT_REDIRECTED = 0, 1, 2, 3

ADVICE = ("Check that the microgateway-cni DaemonSet runs and is ready on this node, that the pod does not use "
          "hostNetwork, and that microgateway-cni is chained in the node's CNI configuration. After fixing, "
          "delete this pod so that it is recreated with the redirection in place; the application must not "
          "serve traffic without the Engine in front of it.")


def _families(option: str) -> list[int]:
    if option == "auto":
        return [4, 6] if ipv6_loopback_present() else [4]
    return [int(f) for f in option.split(",")]


def _write_termination(path: str, message: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(message)
    except OSError as exc:
        sys.stderr.write(f"cannot write termination message to {path}: {exc}\n")


def _failure_message(results: list[ProbeResult], engine_port: int, validation_port: int) -> str:
    failed = [r for r in results if not r.ok]
    what = "; ".join(f"IPv{r.family}: {r.outcome} ({r.detail}) after {r.attempts} attempts" for r in failed)
    return (f"Airlock Microgateway network validation failed: connections to port {validation_port} inside this pod "
            f"are not redirected to the Engine port {engine_port} — {what}. {ADVICE}")


@click.group(invoke_without_command=True, context_settings={"auto_envvar_prefix": "MGW_VALIDATOR"})
@click.option("--engine-port", type=click.IntRange(1, 65535), default=13378, show_default=True, show_envvar=True,
              help="Port the redirection must land on; the validator listens there itself.")
@click.option("--validation-port", type=click.IntRange(1, 65535), default=19003, show_default=True,
              show_envvar=True, help="Loopback port the validator connects to.")
@click.option("--deadline", type=click.FloatRange(0.1, 300), default=3.0, show_default=True, show_envvar=True,
              help="Seconds to keep retrying before giving up (fail closed).")
@click.option("--families", default="auto", show_default=True, show_envvar=True,
              type=click.Choice(["auto", "4", "6", "4,6"]),
              help="Address families to probe; auto adds IPv6 when ::1 exists in the pod.")
@click.option("--termination-log", default="/dev/termination-log", show_default=True, show_envvar=True,
              help="File for the human-readable verdict (Kubernetes termination message).")
@click.pass_context
def probe(ctx: click.Context, engine_port: int, validation_port: int, deadline: float, families: str,
          termination_log: str) -> None:
    """Prove that this pod's inbound traffic is redirected to the Engine before the application starts.

    Listens on the Engine port on loopback, connects to the validation port, and passes only if the
    connection was redirected to its own listener with the validation port as original destination
    and a random token survives the round trip. Prints one JSON line. Exit codes: 0 redirection works,
    3 redirection not working, 2 usage error, 1 internal error.

    Without a command it probes (the init container); `diagnose` explains a failure.
    """
    if ctx.invoked_subcommand is not None:
        return
    start = time.monotonic()
    try:
        results = probe_families(_families(families), engine_port, validation_port, start + deadline)
    except PortInUse as exc:
        message = (f"Airlock Microgateway network validation failed: port {engine_port} is already in use at {exc} "
                   f"before the Engine started, so the redirection cannot be verified. Another container in the pod "
                   f"must not listen on the Engine port. {ADVICE}")
        _write_termination(termination_log, message)
        click.echo(json.dumps({"verdict": "fail", "reason": "engine-port-in-use", "address": str(exc),
                               "ms": round((time.monotonic() - start) * 1000, 2)}))
        sys.exit(EXIT_NOT_REDIRECTED)
    ok = all(r.ok for r in results)
    click.echo(json.dumps({"verdict": "pass" if ok else "fail", "probes": [r.as_dict() for r in results],
                           "ms": round((time.monotonic() - start) * 1000, 2)}))
    if ok:
        _write_termination(termination_log, "Airlock Microgateway network validation passed: "
                           + ", ".join(f"IPv{r.family}" for r in results) + " redirected to the Engine.")
        sys.exit(EXIT_OK)
    _write_termination(termination_log, _failure_message(results, engine_port, validation_port))
    sys.exit(EXIT_NOT_REDIRECTED)


def main() -> None:
    try:
        probe.main(standalone_mode=True)
    except SystemExit:
        raise
    except Exception as exc:
        sys.stderr.write(f"internal error: {type(exc).__name__}: {exc}\n")
        sys.exit(EXIT_INTERNAL)


@probe.command()
@click.option("--engine-port", type=click.IntRange(1, 65535), default=13378, show_default=True)
@click.option("--validation-port", type=click.IntRange(1, 65535), default=19003, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of the readable report.")
def diagnose(engine_port: int, validation_port: int, as_json: bool) -> None:
    """Explain why the redirection fails (needs NET_ADMIN in the pod's netns, e.g. kubectl debug).

    Lists the MGW_ chains per family, traces a connection to the validation port on lo with scapy
    (redirected, reset or dropped) and says which of the invariants I1-I4 look broken.
    Exit 0 when all look fine, 3 otherwise.
    """
    from validator.diagnose import chain_report, invariants, trace_probe

    families = _families("auto")
    chains = chain_report(families, engine_port)
    traces = {family: trace_probe(family, validation_port, engine_port) for family in families}
    findings = invariants(chains, traces, engine_port)
    if as_json:
        click.echo(json.dumps({"chains": chains, "probes": traces, "invariants": findings}))
    else:
        for family in families:
            info, trace = chains[family], traces[family]
            click.echo(f"IPv{family}: chains {', '.join(info['chains']) or 'none'}; "
                       f"PREROUTING jump {'yes' if info['prerouting_jump'] else 'NO'}, "
                       f"OUTPUT jump {'yes' if info['output_jump'] else 'NO'}")
            for rule in info["rules"]:
                click.echo(f"    {rule}")
            click.echo(f"  probe to [{'127.0.0.1' if family == 4 else '::1'}]:{validation_port}: {trace['verdict']}")
        for name, finding in findings.items():
            click.echo(f"{name}: {finding}")
    sys.exit(EXIT_OK if all(v == "ok" for v in findings.values()) else EXIT_NOT_REDIRECTED)
