"""The validator's command line with click: help text, usage errors and `diagnose`.

The init container's plain invocation does not come here (validator/main.py); this module is
imported only when the command line needs click.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from cni.contract import EXIT_NOT_REDIRECTED, PORT_RANGE
from validator.options import BY_NAME, FAMILY_CHOICES, OPTIONS, SECONDS_RANGE, Option, ProbeOptions
from validator.verdict import EXIT_OK, families_for, run_probe

CLICK_TYPES: dict[str, Any] = {
    "port": click.IntRange(*PORT_RANGE),
    "seconds": click.FloatRange(*SECONDS_RANGE),
    "families": click.Choice(FAMILY_CHOICES),
    "path": str,
}


def _with_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(OPTIONS):
        command = _click_option(option)(command)
    return command


def _click_option(option: Option) -> Callable[..., Any]:
    return click.option(f"--{option.name}", type=CLICK_TYPES[option.kind], default=option.default,
                        show_default=True, show_envvar=True, help=option.help)


@click.group(invoke_without_command=True, context_settings={"auto_envvar_prefix": "MGW_VALIDATOR"})
@_with_options
@click.pass_context
def probe(ctx: click.Context, /, **values: Any) -> None:
    """Prove that this pod's inbound traffic is redirected to the Engine before the application starts.

    Listens on the Engine port on loopback, connects to the validation port, and passes only if the
    connection was redirected to its own listener with the validation port as original destination
    and a random token survives the round trip. Prints one JSON line. Exit codes: 0 redirection works,
    3 redirection not working, 2 usage error, 1 internal error.

    Without a command it probes (the init container); `diagnose` explains a failure.
    """
    if ctx.invoked_subcommand is None:
        sys.exit(run_probe(ProbeOptions(**values)))


@probe.command()
@_click_option(BY_NAME["engine-port"])
@_click_option(BY_NAME["validation-port"])
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of the readable report.")
def diagnose(engine_port: int, validation_port: int, as_json: bool) -> None:
    """Explain why the redirection fails (needs NET_ADMIN in the pod's netns, e.g. kubectl debug).

    Lists the MGW_ chains per family in either backend (the legacy tables, our nft tables), traces a
    connection to the validation port on lo with scapy (redirected, reset or dropped) and says which of
    the invariants I1-I4 and I7 look broken.
    Exit 0 when all look fine, 3 otherwise.
    """
    from validator.diagnose import chain_report, invariants, trace_probe

    families = families_for("auto")
    chains = chain_report(families, engine_port)
    traces = {family: trace_probe(family, validation_port, engine_port) for family in families}
    findings = invariants(chains, traces, engine_port)
    if as_json:
        click.echo(json.dumps({"chains": chains, "probes": traces, "invariants": findings}))
    else:
        for family in families:
            info, trace = chains[family], traces[family]
            click.echo(f"IPv{family} ({' + '.join(info['backends']) or 'no backend'}): "
                       f"chains {', '.join(info['chains']) or 'none'}; "
                       f"PREROUTING jump {'yes' if info['prerouting_jump'] else 'NO'}, "
                       f"OUTPUT jump {'yes' if info['output_jump'] else 'NO'}")
            for rule in info["rules"]:
                click.echo(f"    {rule}")
            click.echo(f"  filter guard (non-TCP inbound: {info['guard']['non_tcp']}):")
            for rule in info["guard"]["rules"]:
                click.echo(f"    {rule}")
            click.echo(f"  probe to [{'127.0.0.1' if family == 4 else '::1'}]:{validation_port}: {trace['verdict']}")
        for name, finding in findings.items():
            click.echo(f"{name}: {finding}")
    sys.exit(EXIT_OK if all(v.startswith("ok") for v in findings.values()) else EXIT_NOT_REDIRECTED)
