"""Reach a Prefect API before running flows: the configured server, or one local API for this process.

Without `PREFECT_API_URL`, Prefect starts a temporary API server in a subprocess on first use. On a
fresh `PREFECT_HOME` that server first migrates its database, which takes longer than Prefect's
default 20 s start-up timeout on a small machine, so a newcomer's first command would fail at random.
Here the start is explicit, once per process, announced, with a generous timeout
(`OUTBOUND_PREFECT_START_TIMEOUT`, default 300 s); a failure becomes one message, and SIGTERM exits
through the normal path so the temporary server is stopped with the command that started it.
"""

import os
import signal
import threading
from typing import Callable

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


def ensure_prefect_api(say: Callable[[str], None] = lambda _: None) -> str:
    """Return the API URL flows will use, starting this process's temporary Prefect API if needed."""
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
