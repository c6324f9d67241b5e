"""`occctl ui`: --help and --dry-run start nothing; the server binds 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from occctl.cli import app
from occctl import ui as ui_module
from occctl.ui import build_command, is_loopback, stop_group



@pytest.fixture
def no_server(monkeypatch):
    """Any attempt to start a process fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a process was started: {args}")

    monkeypatch.setattr(ui_module.subprocess, "Popen", refuse)
    monkeypatch.setattr(ui_module.subprocess, "run", refuse)


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_help_starts_nothing(no_server, results_dir):
    result = CliRunner().invoke(app, ["ui", "--help"])
    assert result.exit_code == 0, result.output
    assert "--host" in result.output and "--port" in result.output and "--dry-run" in result.output
    assert "127.0.0.1" in result.output
    assert not results_dir.exists()


@pytest.mark.parametrize("flag", ["--dry-run", "--print-command"])
def test_dry_run_prints_a_loopback_command_on_the_project_store(flag, no_server, results_dir):
    result = CliRunner().invoke(app, ["ui", flag])
    assert result.exit_code == 0, result.output
    assert result.stderr == "", "no warning for the default host"
    words = shlex.split(result.stdout)
    assert words[0] == "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false"
    command = words[1:]
    assert command[:4] == [sys.executable, "-m", "mlflow", "server"]
    assert option(command, "--host") == "127.0.0.1"
    assert option(command, "--port") == "5000"
    assert option(command, "--backend-store-uri") == f"sqlite:///{results_dir / 'mlflow.db'}"
    assert option(command, "--default-artifact-root") == (results_dir / "mlartifacts").as_uri()
    assert not results_dir.exists(), "--dry-run creates nothing"


def test_the_store_is_the_one_tracking_writes(results_dir, monkeypatch):
    from occctl.tracking import tracking_uri

    command = build_command()
    assert option(command, "--backend-store-uri") == tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/elsewhere.db")
    command = build_command(port=6000)
    assert option(command, "--backend-store-uri") == "sqlite:////tmp/elsewhere.db" == tracking_uri()
    assert option(command, "--port") == "6000"


def test_a_remote_tracking_server_is_not_served_again(results_dir, monkeypatch, no_server):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example.org")
    result = CliRunner().invoke(app, ["ui", "--dry-run"])
    assert result.exit_code == 3
    assert "already a server" in result.stderr and "MLFLOW_TRACKING_URI" in result.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "myhost.example.org"])
def test_non_loopback_host_warns(host, no_server, results_dir):
    result = CliRunner().invoke(app, ["ui", "--print-command", "--host", host, "--port", "8080"])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and repr(host) in result.stderr and "8080" in result.stderr
    assert option(shlex.split(result.stdout)[1:], "--host") == host


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True),
                                            ("[::1]", True), ("localhost", True), ("LOCALHOST", True),
                                            ("0.0.0.0", False), ("::", False), ("10.0.0.1", False),
                                            ("localhost.evil.com", False), ("", False)])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_bad_port_is_a_usage_error(no_server, results_dir):
    result = CliRunner().invoke(app, ["ui", "--port", "70000"])
    assert result.exit_code == 2


class FakePopen:
    calls: list = []

    def __init__(self, command, **kwargs):
        FakePopen.calls.append((command, kwargs))
        self.pid = -1

    def wait(self, timeout=None):
        return self.code


def test_start_runs_the_server_in_its_own_group_and_passes_its_exit_code(results_dir, monkeypatch):
    FakePopen.calls = []
    FakePopen.code = 0
    monkeypatch.setattr(ui_module.subprocess, "Popen", FakePopen)
    result = CliRunner().invoke(app, ["ui", "--port", "5123"])
    assert result.exit_code == 0, result.output
    ((command, kwargs),) = FakePopen.calls
    assert option(command, "--host") == "127.0.0.1" and option(command, "--port") == "5123"
    assert kwargs["start_new_session"] is True
    assert kwargs["env"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert "http://127.0.0.1:5123" in result.stderr
    assert results_dir.is_dir(), "the sqlite store needs its folder"
    FakePopen.code = 1
    assert CliRunner().invoke(app, ["ui"]).exit_code == 1


def test_ctrl_c_stops_the_server_group_and_exits_130(results_dir, monkeypatch):
    stopped = []

    class Interrupted(FakePopen):
        def wait(self, timeout=None):
            raise KeyboardInterrupt

    monkeypatch.setattr(ui_module.subprocess, "Popen", Interrupted)
    monkeypatch.setattr(ui_module, "stop_group", lambda proc, grace_s=10.0: stopped.append(proc))
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
    result = CliRunner().invoke(app, ["ui"])
    assert result.exit_code == 130
    assert len(stopped) == 1
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)) == before, "handlers restored"


def test_stop_group_leaves_no_process_behind():
    """A leader with a child that ignores SIGINT (like a background job): SIGINT, then SIGTERM, ends both."""
    proc = subprocess.Popen(["sh", "-c", "trap '' INT; sleep 60 & wait"], start_new_session=True)
    time.sleep(0.3)
    try:
        stop_group(proc, grace_s=1.0)
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)


def test_the_command_is_valid_for_the_installed_mlflow(results_dir):
    """mlflow parses every option we pass (unknown ones exit 2); --help then exits 0 before serving."""
    command = build_command("127.0.0.1", 5999)
    proc = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--backend-store-uri" in proc.stdout
