"""The CLI's temporary Prefect API: announced, a clear message when it cannot start, never orphaned.

These run the real `outbound` command in a subprocess with a fresh PREFECT_HOME and no
PREFECT_API_URL, as a newcomer's first command does.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import event, write_config

OUTBOUND = [sys.executable, "-c", "from deployments.cli import main; main()"]


def _children(pid: int) -> list[int]:
    """Every descendant of `pid`, read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out += kids
        frontier += kids
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _env(tmp_path: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), OUTBOUND_DATABASE_URL=f"sqlite:///{tmp_path}/s.db",
               PYTHONPATH=str(Path(__file__).parents[1]), **extra)
    return env


def _event_file(tmp_path: Path) -> Path:
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event(username="newcomer")))
    return path


def test_a_prefect_api_that_cannot_start_in_time_is_one_message_and_leaves_no_process(tmp_path, scim):
    config = write_config(tmp_path, scim)
    env = _env(tmp_path, OUTBOUND_PREFECT_START_TIMEOUT="1")
    done = subprocess.run([*OUTBOUND, "event", str(_event_file(tmp_path)), "--config", str(config)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "starting a temporary Prefect API" in done.stderr
    assert "Prefect's temporary API did not start" in done.stderr
    assert "PREFECT_API_URL" in done.stderr and "OUTBOUND_PREFECT_START_TIMEOUT" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_sigterm_stops_the_temporary_prefect_api_with_the_command(tmp_path, scim):
    config = write_config(tmp_path, scim)
    proc = subprocess.Popen([*OUTBOUND, "event", str(_event_file(tmp_path)), "--config", str(config)],
                            env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, servers = time.monotonic() + 90, []
        while time.monotonic() < deadline and not servers:  # wait until the API server process exists
            servers = [c for c in _children(proc.pid)
                       if b"uvicorn" in Path(f"/proc/{c}/cmdline").read_bytes()] if proc.poll() is None else []
            time.sleep(0.2)
        assert servers, "the command never started a Prefect API server"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(s) for s in servers):
            time.sleep(0.2)
        assert not [s for s in servers if _alive(s)], "the Prefect API server outlived the command"
        assert proc.returncode == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
        for s in _children(proc.pid):
            os.kill(s, signal.SIGKILL)


def test_the_command_provisions_through_the_api_it_launched_without_importing_prefects_server(tmp_path, scim):
    """The temporary API is launched first thing and reached by URL: the command never loads Prefect's server code."""
    config = write_config(tmp_path, scim)
    report = ("import atexit, sys; atexit.register(lambda: print('server module loaded:', "
              "'prefect.server.api.server' in sys.modules, file=sys.stderr)); "
              "from deployments.cli import main; main()")
    done = subprocess.run([sys.executable, "-c", report, "event", str(_event_file(tmp_path)), "--config", str(config)],
                          env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "server module loaded: False" in done.stderr
    assert [u["userName"] for u in scim.users()] == ["newcomer"]
