"""The event API's drain in a process of its own: the API only accepts, a child process provisions.

Drainer threads in the API's process share its GIL with the request loop: under a burst the
CPU-bound drain held up the answers to the senders (2,000 events from 16 clients on a quiet
machine: 220–235 events/s accepted beside drainer threads, 328 beside a drain process).
`DrainProcess` runs the same drainers (`deployments.dispatch.InProcess`: warm-up, batches, retries,
kept Prefect clients) in a child Python process and wakes them over the child's stdin, one byte per
accepted event, written without blocking: the child reads whatever has queued up at once and one
drain serves it all, and a full pipe already holds more wake-ups than the child needs.

Nothing is lost when the child dies: every event is in the outbox before its 202, and a child looks
at the outbox when it starts (events a dead child left running included) and every
`InProcess.LOOK_EVERY` seconds. The API restarts a dead child at the next accepted event, or after
LOOK_EVERY seconds so that retries still come due, waiting longer each time a child dies young so
that one that cannot start does not spin. The child gets the Prefect API this process uses and the
state store's URL through its environment, never its command line. Closing its stdin stops it: it
lets running batches finish and exits, so the child of an API that was killed stops too.

    python -P -m deployments.drain_process --ready-fd N [--config PATH] [--workers N] [--connector NAME ...]
"""

import argparse
import contextvars
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from deployments.dispatch import InProcess
from deployments.processes import end

log = logging.getLogger("outbound.api")

READY_WAIT = 120.0  # seconds the API's start-up waits for a warm child (events wait in the outbox meanwhile)
STOP_TIMEOUT = 60.0  # seconds the child has to finish its batches when the API stops, as threads had
YOUNG = 60.0  # a child that dies sooner than this waits longer before the next start (1, 2, 4 … 60 s)
CODE_ROOT = Path(__file__).resolve().parent.parent  # the child runs this checkout's code, as the API does


def prefect_api_url() -> str:
    """The Prefect API the runs of this process go to (this process's temporary one if none is set)."""
    from prefect.settings import PREFECT_API_URL

    from deployments.prefect_api import ensure_prefect_api

    return PREFECT_API_URL.value() or ensure_prefect_api()


def child_env(prefect_url: str) -> dict[str, str]:
    """This process's environment (secrets stay there), plus where the runs and the store are."""
    from models.db import database_url

    path = os.pathsep.join(p for p in (str(CODE_ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PREFECT_API_URL": prefect_url, "OUTBOUND_DATABASE_URL": database_url(), "PYTHONPATH": path}


class DrainProcess:
    """Dispatch for the event API: wake the drainers of a child process, restarting it when it dies."""

    def __init__(self, config_path: Optional[str], connectors: list[str], workers: int = 2):
        self.arguments = ["--workers", str(max(1, workers)),
                          *(["--config", str(Path(config_path).resolve())] if config_path else []),
                          *(a for c in connectors for a in ("--connector", c))]
        # The Prefect settings in force where the app was made (e.g. a test server) go to the child.
        self._context = contextvars.copy_context()
        self._lock = threading.Condition()
        self._child: Optional[subprocess.Popen] = None
        self._ready, self._ended = False, 0  # a child is warm; how many children have exited
        self._woken = self._stopping = False
        self._watcher: Optional[threading.Thread] = None

    @property
    def pid(self) -> Optional[int]:
        """The running child's pid; None while there is none (not started yet, or dead and not restarted)."""
        with self._lock:
            return self._child.pid if self._child else None

    def start(self) -> None:
        """Start the child; return once its drainers are warm, or it died, or after READY_WAIT seconds."""
        self._start_watching()
        with self._lock:
            if not self._lock.wait_for(lambda: self._ready or self._ended or self._stopping, READY_WAIT):
                log.warning("drain process not ready after %.0f s: events are stored and wait for it", READY_WAIT)

    def _start_watching(self) -> None:
        with self._lock:
            if self._watcher is None and not self._stopping:
                self._watcher = threading.Thread(target=self._watch, name="outbound-drain-process", daemon=True)
                self._watcher.start()

    def __call__(self, event_id: str, event_type: str, trigger: str) -> None:
        self._start_watching()
        with self._lock:  # under the lock: the watcher closes a dead child's pipe, and its fd may be reused
            self._woken = True
            self._lock.notify_all()
            if self._child is None or self._stopping:
                return  # the next child looks at the outbox when it starts (stopping: its stdin is closed)
            try:
                os.write(self._child.stdin.fileno(), b"\n")
            except BlockingIOError:
                pass  # the pipe is full of wake-ups the child has not read yet: one more adds nothing
            except OSError:
                pass  # the child has just died: the watcher restarts it

    def _watch(self) -> None:
        young_deaths = 0
        while True:
            started = time.monotonic()
            child = self._run_child()
            lived = time.monotonic() - started
            with self._lock:
                self._child, self._woken = None, False  # what woke the dead child: the next one looks anyway
                if child:
                    child.stdin.close()
                if self._stopping:
                    return
            young_deaths = young_deaths + 1 if lived < YOUNG else 0
            pause = min(YOUNG, 2.0 ** (young_deaths - 1)) if young_deaths else 0.0
            if child:
                log.warning("drain process pid=%d exited (code %s) after %.0f s; a new one starts at the next event "
                            "or within %.0f s", child.pid, child.returncode, lived, pause + InProcess.LOOK_EVERY)
            with self._lock:
                self._lock.wait_for(lambda: self._stopping, timeout=pause)
                self._lock.wait_for(lambda: self._stopping or self._woken, timeout=InProcess.LOOK_EVERY)
                if self._stopping:
                    return

    def _run_child(self) -> Optional[subprocess.Popen]:
        """Start a child, say when it is warm, and return it once it has exited (None: it did not start)."""
        ready_read, ready_write = os.pipe()
        try:
            env = child_env(self._context.copy().run(prefect_api_url))
            command = [sys.executable, "-P", "-m", "deployments.drain_process", "--ready-fd", str(ready_write),
                       *self.arguments]
            child = subprocess.Popen(command, stdin=subprocess.PIPE, env=env, cwd=os.getcwd(), pass_fds=[ready_write])
        except Exception as exc:  # no Prefect API, no interpreter: try again later, the outbox keeps the events
            log.warning("drain process did not start: %s: %s", type(exc).__name__, exc)
            os.close(ready_read)
            return None
        finally:
            os.close(ready_write)
        os.set_blocking(child.stdin.fileno(), False)
        with self._lock:
            if self._stopping:  # stopped while it was starting: EOF stops it once it is up
                child.stdin.close()
            self._child = child
        log.info("drain process pid=%d started", child.pid)
        with open(ready_read, "rb") as ready:
            warm = bool(ready.read(1))  # nothing (EOF) when it died first
        with self._lock:
            self._ready = warm
            self._lock.notify_all()
        child.wait()
        with self._lock:
            self._ready, self._ended = False, self._ended + 1
            self._lock.notify_all()
        return child

    def shutdown(self, wait: bool = True) -> None:
        """Stop the child: EOF on its stdin lets its batches finish; then SIGTERM, then SIGKILL."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
            child, watcher = self._child, self._watcher
            if child:
                child.stdin.close()
        if child:
            try:
                child.wait(timeout=STOP_TIMEOUT if wait else 5)
            except subprocess.TimeoutExpired:
                log.warning("drain process pid=%d still running after stop: terminated", child.pid)
                end(child, grace=10)
        if watcher:
            watcher.join(timeout=30)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="The event API's drainers, woken over stdin.")
    parser.add_argument("--ready-fd", type=int, required=True, help="written to once the drainers are warm")
    parser.add_argument("--config")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connector", action="append", default=[])
    args = parser.parse_args(argv)
    from deployments.prefect_api import exit_on_sigterm
    from models.outbox import waiting_count

    exit_on_sigterm()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the API, which stops this by EOF
    drains = InProcess(args.config, args.connector, args.workers)  # warms up
    try:
        if waiting_count(running_too=True):
            drains("", "", "")  # events accepted while no drain process ran, or left running by one that died
        else:
            drains.start()
    except Exception as exc:  # the store is down: the drainers look again every LOOK_EVERY seconds
        log.warning("drain process cannot read the outbox: %s", exc)
        drains.start()
    with open(args.ready_fd, "wb") as ready:
        ready.write(b"1")
    try:
        while os.read(sys.stdin.fileno(), 65536):  # each read takes every wake-up queued so far
            drains("", "", "")
    finally:
        drains.shutdown(wait=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
