"""Reach a Prefect API before running flows: the configured server, or one local API for this process.

Without `PREFECT_API_URL`, Prefect starts a temporary API server in a subprocess on first use. On a
fresh `PREFECT_HOME` that server first migrates its database, which takes longer than Prefect's
default 20 s start-up timeout on a small machine, so a newcomer's first command would fail at random.
Here the start is explicit, once per process, announced, with a generous timeout
(`OUTBOUND_PREFECT_START_TIMEOUT`, default 300 s); a failure becomes one message, and SIGTERM exits
through the normal path so the temporary server is stopped with the command that started it.

A command calls `launch_prefect_api()` first thing, before Prefect is imported: the temporary API's
process then starts while the command imports its flows and reads its configuration (on two cores
the two overlap), and the command never imports Prefect's server code (~3 s of CPU) only to start
it. Without that early launch (Prefect already imported), Prefect's own subprocess server is used.
"""

import atexit
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from deployments.processes import end
from models.errors import ProvisioningError

DEFAULT_START_TIMEOUT = 300
_started = threading.Lock()


class PrefectUnavailable(ProvisioningError, RuntimeError):
    """No Prefect API could be reached or started."""

    code = "prefect_unavailable"


def start_timeout() -> int:
    raw = os.environ.get("OUTBOUND_PREFECT_START_TIMEOUT", "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_START_TIMEOUT


def exit_on_sigterm() -> None:
    """Turn SIGTERM into a normal exit, so atexit handlers (the temporary server's stop) run."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: (_ for _ in ()).throw(SystemExit(128 + signum)))


_launched: dict = {}  # the early-launched temporary API: "process", "url", "ready"


def launch_prefect_api() -> None:
    """Start this process's temporary Prefect API without waiting for it (a no-op with PREFECT_API_URL set).

    Only before Prefect is imported: Prefect reads PREFECT_API_URL once, when it is imported, and
    this sets it to the API being started. `ensure_prefect_api` waits for it to answer.
    """
    if os.environ.get("PREFECT_API_URL") or "prefect" in sys.modules or _launched:
        return
    spec = importlib.util.find_spec("prefect")  # where Prefect is installed, without importing it
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # As Prefect's own temporary server runs (prefect.server.api.server.SubprocessASGIServer).
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(spec.origin).parent.parent), "--factory",
         "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port), "--log-level", "error",
         "--lifespan", "on"], env=env)
    _launched.update(process=process, url=f"http://127.0.0.1:{port}/api", ready=False)
    os.environ["PREFECT_API_URL"] = _launched["url"]
    atexit.register(_stop_launched)


def _stop_launched() -> None:
    process: Optional[subprocess.Popen] = _launched.get("process")
    if process is not None and process.poll() is None:
        end(process, grace=10)


def _await_launched(say: Callable[[str], None]) -> str:
    """Wait for the early-launched API to answer its health check; PrefectUnavailable when it does not."""
    import httpx

    timeout, url, process = start_timeout(), _launched["url"], _launched["process"]
    deadline, announced = time.monotonic() + timeout, False
    with httpx.Client(timeout=5) as client:
        while True:
            try:
                if client.get(f"{url}/health").status_code == 200:
                    _launched["ready"] = True
                    return url
            except httpx.HTTPError:
                pass
            if process.poll() is not None:
                raise PrefectUnavailable(
                    f"Prefect's temporary API did not start: it exited with code {process.returncode} before it "
                    f"answered. Start a server once (`prefect server start`) and set PREFECT_API_URL=http://127.0.0.1:4200/api.")
            if time.monotonic() > deadline:
                _stop_launched()
                raise PrefectUnavailable(
                    f"Prefect's temporary API did not start: no answer within {timeout} s. Start a server once (`prefect "
                    f"server start`) and set PREFECT_API_URL=http://127.0.0.1:4200/api, or allow more time with "
                    f"OUTBOUND_PREFECT_START_TIMEOUT=SECONDS.")
            if not announced:
                say(f"starting a temporary Prefect API for this command (no PREFECT_API_URL set; the first start "
                    f"migrates its database: up to {timeout} s)…")
                announced = True
            time.sleep(0.1)


def ensure_prefect_api(say: Callable[[str], None] = lambda _: None) -> str:
    """Return the API URL flows will use, starting this process's temporary Prefect API if needed."""
    if _launched:
        with _started:
            return _launched["url"] if _launched["ready"] else _await_launched(say)
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    timeout = start_timeout()
    # Prefect reads this when it starts its temporary server by itself (e.g. from a worker thread).
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(timeout))
    from prefect.server.api.server import SubprocessASGIServer

    with _started:  # one temporary API per process, however many threads ask at once
        server = SubprocessASGIServer()  # the instance Prefect's client uses when no URL is set
        if not server.running:
            say(f"starting a temporary Prefect API for this command (no PREFECT_API_URL set; the first start "
                f"migrates its database: up to {timeout} s)…")
            try:
                server.start(timeout=timeout)
            except Exception as exc:  # RuntimeError on time-out, httpx errors on a bad answer
                server.stop()
                detail = str(exc).split(" stdout:")[0]
                raise PrefectUnavailable(
                    f"Prefect's temporary API did not start: {detail} Start a server once "
                    f"(`prefect server start`) and set PREFECT_API_URL=http://127.0.0.1:4200/api, or allow "
                    f"more time with OUTBOUND_PREFECT_START_TIMEOUT=SECONDS.") from None
        return server.api_url
