"""Dispatching an accepted event: to a Prefect server, or to drainers on this machine.

An event is in the outbox before it is dispatched; dispatch only says "there is work". With a
reachable Prefect server (PREFECT_API_URL) it emits the Prefect event `outbound.user.<type>` and the
`provision-user` deployment's trigger starts the run on a worker (the scale-out path); otherwise it
wakes a drainer, which provisions everything pending in batches (the low-latency path): `InProcess`
here runs the drainer threads, and the event API runs them in a child process of their own
(deployments.drain_process), so that draining never starves accepting. A dispatch that fails loses
nothing: `sweep-events` re-dispatches whatever stays unfinished.
"""

import asyncio
import contextvars
import logging
import threading
import time
from typing import Literal, Optional

log = logging.getLogger("outbound.api")

EVENT_PREFIX = "outbound."
DispatchMode = Literal["auto", "prefect", "in-process"]


def prefect_event_name(event_type: str) -> str:
    return EVENT_PREFIX + event_type  # user.created -> outbound.user.created


def run_tags(trigger: str, connectors: list[str]) -> list[str]:
    return [f"trigger:{trigger}", *(f"connector:{c}" for c in connectors)]


def emit(event_id: str, event_type: str, trigger: str) -> None:
    """Emit the Prefect event that the provision-user deployment's trigger listens for."""
    from prefect.events import emit_event

    emitted = emit_event(event=prefect_event_name(event_type),
                         resource={"prefect.resource.id": f"outbound.event.{event_id}",
                                   "prefect.resource.name": event_id},
                         payload={"event_id": event_id, "trigger": trigger})
    if emitted is None:
        raise RuntimeError("Prefect did not accept the event (no events client)")


def prefect_server_reachable(timeout: float = 2.0) -> bool:
    """A Prefect API is configured (PREFECT_API_URL) and answers its health check."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return False
    try:
        return httpx.get(f"{url.rstrip('/')}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


class InProcess:
    """Drain the outbox in this process: each accepted event wakes a drainer, which provisions
    everything pending in batches (one flow run per batch, not per event) until nothing is left.

    `workers` drainers run at once; they claim disjoint users, so a burst spreads over them. A
    wake-up while every drainer is busy is not lost: a drainer looks again before it sleeps. Every
    LOOK_EVERY seconds an idle drainer also looks for retries that have come due.
    """

    LOOK_EVERY = 15.0  # seconds between looks at the outbox when no event wakes a drainer

    def __init__(self, config_path: Optional[str], connectors: list[str], workers: int = 2):
        from flows.warm import warm_up

        warm_up()  # what a first batch would build, built here, before any drainer thread exists
        self.config_path = config_path
        self.connectors = connectors
        self._wake = threading.Condition()
        self._pending_wakes = 0
        self._stopped = False
        # The Prefect settings in force where the app was made (e.g. a test server) go with each run.
        self._context = contextvars.copy_context()
        self._threads = [threading.Thread(target=self._context.copy().run, args=(self._loop,), daemon=True,
                                          name=f"outbound-drain-{i}") for i in range(max(1, workers))]
        self._started = False

    def start(self) -> None:
        """Start the drainers now (the first wake-up does it otherwise)."""
        with self._wake:
            if not self._started:
                self._started = True
                for thread in self._threads:
                    thread.start()

    def __call__(self, event_id: str, event_type: str, trigger: str) -> None:
        self.start()
        with self._wake:
            self._pending_wakes += 1
            self._wake.notify()

    def _loop(self) -> None:
        # One event loop and one pair of Prefect API clients for the thread's life. Prefect makes new
        # clients for each run otherwise (three, each parsing certifi's CA bundle for its TLS context,
        # and checking the server's version): that was half of a lone event's time at rest.
        loop = asyncio.new_event_loop()
        try:
            while not self._stopped:
                try:
                    loop.run_until_complete(self._drain_with_clients())
                except Exception as exc:  # the Prefect API is unreachable: the outbox keeps the events
                    log.warning("in-process drainer cannot reach the Prefect API: %s: %s", type(exc).__name__, exc)
                    with self._wake:
                        if not self._stopped:
                            self._wake.wait(timeout=self.LOOK_EVERY)
        finally:
            loop.close()

    async def _drain_with_clients(self) -> None:
        from prefect.context import AsyncClientContext, SyncClientContext

        with SyncClientContext.get_or_create():
            async with AsyncClientContext.get_or_create():
                while self._work_waits():  # blocks this thread while idle: nothing else runs on its loop
                    await self._drain_once()

    def _work_waits(self) -> bool:
        """Wait until woken or LOOK_EVERY passes with a retry due; False once stopped."""
        from models.outbox import waiting_count

        while True:
            with self._wake:
                if not self._pending_wakes and not self._stopped:
                    self._wake.wait(timeout=self.LOOK_EVERY)
                if self._stopped:
                    return False
                woken, self._pending_wakes = self._pending_wakes, 0  # one drain serves every wake-up so far
            try:  # unwoken: only when a retry has come due (or an event was stored by another process)
                if woken or waiting_count():
                    return True
            except Exception as exc:  # the store is down: look again later
                log.warning("in-process drainer cannot read the outbox: %s", exc)

    async def _drain_once(self) -> None:
        from prefect import tags

        from flows.provision import provision_user

        try:
            with tags(*run_tags("event", self.connectors)):
                await provision_user(config_path=self.config_path, return_state=True)
        except Exception as exc:  # the outbox keeps the events; the sweeper will try again
            log.warning("in-process drain failed: %s: %s", type(exc).__name__, exc)

    def shutdown(self, wait: bool = True) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify_all()
        if wait and self._started:
            for thread in self._threads:
                thread.join(timeout=60)


class AutoDispatch:
    """Emit to Prefect when its server is reachable, else run in-process; re-checked every 30 s.

    `in_process`: the drainers of this process (`InProcess`) or of a child process
    (`deployments.drain_process.DrainProcess`, what the event API uses).
    """

    def __init__(self, mode: DispatchMode, in_process, recheck: float = 30.0):
        self.mode, self.in_process, self.recheck = mode, in_process, recheck
        self._checked_at, self._reachable = 0.0, False
        self._lock = threading.Lock()
        self._context = contextvars.copy_context()

    def use_prefect(self) -> bool:
        if self.mode != "auto":
            return self.mode == "prefect"
        with self._lock:
            if time.monotonic() - self._checked_at > self.recheck:
                self._reachable = self._context.copy().run(prefect_server_reachable)
                self._checked_at = time.monotonic()
            return self._reachable

    def __call__(self, event_id: str, event_type: str, trigger: str) -> str:
        if self.use_prefect():
            self._context.copy().run(emit, event_id, event_type, trigger)
            return "prefect"
        self.in_process(event_id, event_type, trigger)
        return "in-process"

    def start(self) -> None:
        """Start the in-process drainers before the first event when they are sure to be used."""
        if self.mode == "in-process":
            self.in_process.start()

    def shutdown(self, wait: bool = True) -> None:
        self.in_process.shutdown(wait=wait)
