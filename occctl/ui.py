"""`occctl ui`: the MLflow UI on the project's store, bound to the loopback interface unless asked otherwise.

The only network server occctl starts. It runs ``python -m mlflow server`` with the current interpreter (so the
MLflow that occctl logs with), the store and artifact root that ``occctl.tracking`` resolves, one worker.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import signal
import subprocess
import sys

import typer
from rich.markup import escape

from occctl.console import err, exits_on_error, out
from occctl.errors import EnvError
from occctl.processes import stop_group

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")
# No job runner (mlflow 3 starts ~8 huey worker processes for GenAI jobs): browsing runs needs none of them.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or a localhost name; anything else (0.0.0.0, a LAN address, a hostname) is not."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def build_command(host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow server`` command line for the project's store (nothing is created or started)."""
    from occctl.tracking import resolve_store

    store = resolve_store()
    if store.is_remote:
        raise EnvError(f"the tracking store is already a server ({store.uri}, from MLFLOW_TRACKING_URI): "
                       "open it in a browser instead",
                       hint="unset MLFLOW_TRACKING_URI to browse the store under results/")
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store.uri]
    if store.artifacts:
        command += ["--default-artifact-root", store.artifacts]
    return command + ["--host", host, "--port", str(port), "--workers", "1"]


def start_ui(
    host: str = typer.Option("127.0.0.1", "--host", help="interface to bind; the default is loopback only "
                             "(0.0.0.0 exposes every run, unauthenticated, to the network)"),
    port: int = typer.Option(5000, "--port", min=1, max=65535, help="TCP port"),
    dry_run: bool = typer.Option(False, "--dry-run", "--print-command",
                                 help="print the mlflow command and exit; start nothing"),
) -> None:
    """Start the MLflow UI on the project's store (results/mlflow.db unless MLFLOW_TRACKING_URI is set), on
    127.0.0.1 by default; Ctrl-C stops it."""
    with exits_on_error():
        command = build_command(host, port)
    if not is_loopback(host):
        err.print(f"[bold yellow]warning:[/] binding the MLflow UI to {escape(repr(host))}, not 127.0.0.1: anyone "
                  f"who can reach this machine on port {port} can read and change every run (MLflow has no login). "
                  f"Use an SSH tunnel instead: ssh -L {port}:127.0.0.1:{port} <host>",
                  highlight=False, soft_wrap=True)
    env = server_env()
    if dry_run:
        prefix = "".join(f"{k}={shlex.quote(v)} " for k, v in env.items() if os.environ.get(k) != v)
        out.print(prefix + shlex.join(command), markup=False, highlight=False, soft_wrap=True)
        return
    from occctl.rundir import results_root

    with exits_on_error():
        require_free_port(host, port)  # else mlflow logs the clash and exits 0
        results_root().mkdir(parents=True, exist_ok=True)  # sqlite needs the folder; an empty store is fine
    shown = f"[{host}]" if ":" in host else host
    err.print(f"MLflow UI on http://{shown}:{port}  (store {command[command.index('--backend-store-uri') + 1]}); "
              "Ctrl-C stops it", markup=False, highlight=False, soft_wrap=True)
    code = serve(command, env)
    if code:
        raise typer.Exit(code)


def require_free_port(host: str, port: int) -> None:
    """EnvError (exit 3) when ``host:port`` cannot be bound: another server (a second `occctl ui`) has it."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no clash
        try:
            probe.bind((host, port))
        except OSError as e:
            raise EnvError(f"cannot serve the MLflow UI on {host}:{port}: {e.strerror or e} (another `occctl ui` "
                           "or server has that port?)", hint=f"pass another --port, e.g. --port {port + 1}") from None


def server_env() -> dict[str, str]:
    """SERVER_ENV under the caller's environment (a variable already set wins)."""
    return {**SERVER_ENV, **{k: os.environ[k] for k in SERVER_ENV if k in os.environ}}


def serve(command: list[str], env: dict[str, str] | None = None) -> int:
    """Run the server in its own process group until it exits; Ctrl-C, SIGTERM or SIGHUP stop the whole group
    (mlflow starts uvicorn and a job runner: none of them is left behind). -> exit code (130: interrupted)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    proc = subprocess.Popen(command, env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        stop_group(proc)
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def register(app: typer.Typer) -> None:
    """Add ``ui`` to a Typer app (occctl's root app, or a test's)."""
    app.command("ui")(start_ui)
