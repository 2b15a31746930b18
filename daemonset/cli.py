"""microgateway-cni-installer: the container of the kube-system DaemonSet (one per node)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import urllib.request
from typing import TYPE_CHECKING, Any

import click

from daemonset.api import api_client, daemonset_deleted
from daemonset.clock import Clock, SystemClock
from daemonset.settings import Settings, SettingsError, from_env, help_table

if TYPE_CHECKING:
    from daemonset.server import Metrics
    from daemonset.taint import TaintGate

logger = logging.getLogger("microgateway-cni-installer")


def _setup_logging(level: str) -> None:
    from pythonjsonlogger.json import JsonFormatter

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(message)s", rename_fields={"levelname": "level"}))
    logger.handlers[:] = [handler]
    logger.setLevel({"warn": logging.WARNING}.get(level, level.upper()))
    logger.propagate = False


def log(level: str, msg: str, **fields: Any) -> None:
    logger.log({"warn": logging.WARNING}.get(level, logging.getLevelName(level.upper())), msg, extra=fields)


def _settings() -> Settings:
    try:
        return from_env(os.environ)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None


@click.group(invoke_without_command=True, help=f"""Install microgateway-cni on this node and keep it chained; serve
health, readiness and metrics.

Configured by environment variables (set from the DaemonSet's ConfigMap and the downward API):

\b
{help_table()}
""")
@click.pass_context
def cli(ctx: click.Context) -> None:
    if ctx.invoked_subcommand is None:
        ctx.invoke(run)


def _taint_gate(settings: Settings, api: Any, metrics: Metrics, clock: Clock) -> TaintGate:
    """The start-up taint gate for this node; a gate that cannot reach the API or name its node is an error."""
    from daemonset.taint import TaintGate

    if settings.startup_taint and (api is None or not settings.node_name):
        raise click.UsageError(f"MGW_STARTUP_TAINT={settings.startup_taint} needs NODE_NAME and "
                               "KUBERNETES_SERVICE_HOST to lift the taint; set MGW_STARTUP_TAINT= (empty) to turn "
                               "the gate off")

    def opened(seconds: float) -> None:
        metrics.node_untainted.set(1)
        metrics.untaint_seconds.set(seconds)

    gate = TaintGate(api, settings.node_name, settings.startup_taint, log,
                     on_failure=lambda reason: metrics.untaint_failures.labels(reason=reason).inc(), on_open=opened,
                     clock=clock)
    metrics.node_untainted.set(1 if gate.open else 0)
    return gate


@cli.command()
def run() -> None:
    """Install, watch and repair until SIGTERM (the default command)."""
    from daemonset.install import Installer
    from daemonset.repair import Repairer
    from daemonset.server import Metrics, serve
    from daemonset.watch import watch

    settings = _settings()
    _setup_logging(settings.log_level)
    metrics = Metrics()
    stop = threading.Event()
    clock = SystemClock(stop)
    installer = Installer(settings, log, on_revert=metrics.reverts.inc, clock=clock)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    api = api_client(settings) if settings.api_server else None
    gate = _taint_gate(settings, api, metrics, clock)
    server = serve(settings.listen_port, lambda: installer.ready() and gate.open, metrics)

    def reconcile() -> None:
        try:
            result = installer.reconcile()
            metrics.installs.labels(result=result).inc()
            if result == "waiting":
                log("info", "no primary CNI configuration yet; waiting", dir=settings.cni_net_dir)
        except Exception as exc:
            metrics.installs.labels(result="error").inc()
            log("error", "install failed; will retry on the next change", error=f"{type(exc).__name__}: {exc}")
        gate.recheck()

    threads = [threading.Thread(target=watch, args=([settings.cni_net_dir, settings.cni_bin_dir,
                                                     settings.service_account_dir], reconcile, stop), daemon=True)]
    threads.append(threading.Thread(target=gate.run, args=(installer.ready, installer.binary.path), daemon=True))
    if api is not None and settings.node_name and settings.repair_mode != "none":
        repairer = Repairer(api, settings.node_name, settings.repair_mode, log,
                            lambda result: metrics.repairs.labels(result=result).inc())
        threads += [threading.Thread(target=repairer.watch, args=(stop,), daemon=True),
                    threading.Thread(target=repairer.work, args=(stop,), daemon=True)]
    for thread in threads:
        thread.start()
    log("info", "installer running", mode=settings.mode, node=settings.node_name, port=settings.listen_port)
    stop.wait()
    gate.close()
    if api is not None and daemonset_deleted(api, settings, log):
        installer.uninstall()
    else:
        log("info", "stopping without uninstall (restart or upgrade): pods stay protected")
    server.shutdown()


@cli.command()
def uninstall() -> None:
    """Remove the chained entry (or standalone file) and the kubeconfig; keep the binary for DEL."""
    from daemonset.install import Installer

    settings = _settings()
    _setup_logging(settings.log_level)
    if not Installer(settings, log).uninstall():
        sys.exit(1)


@cli.command()
@click.option("--port", type=int, default=None, help="Installer port (default: MGW_LISTEN_PORT or 8000).")
@click.option("--path", type=click.Choice(["/readyz", "/healthz"]), default="/readyz", show_default=True)
def probe(port: int | None, path: str) -> None:
    """Exec probe: exit 0 when the installer answers 200 on PATH."""
    port = port or _settings().listen_port
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            sys.exit(0 if response.status == 200 else 1)
    except OSError as exc:
        click.echo(f"{path}: {exc}", err=True)
        sys.exit(1)


def main() -> None:
    cli.main(prog_name="microgateway-cni-installer")
