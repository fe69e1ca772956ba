"""Where a burst's time goes: accepting, claiming, each task, Prefect calls, store writes, target requests.

    .venv/bin/python bench/profile_burst.py [--events 2000] [--clients 16] [--store sqlite|postgres]
                                            [--profile] [--drainers 1] [--existing 0]
                                            [--create optimistic|lookup]

One run, one SCIM server (scim2-server in its own process, so its CPU is not charged to the engine):
1. bare client: POST /Bulk with 100 creates per request, sequentially, `--events` other users;
   `--existing N` then puts N more accounts in the target (untimed), a larger target to read.
2. accepting: the event API (`deployments.api.create_app`) under uvicorn in this process, its
   dispatch only counting; `--clients` senders in a child process POST `--events` user.created
   events. Time inside `accept` (validate + store) is shown beside the HTTP rate.
3. draining: the stored events through `provision-user` (the temporary Prefect API launched first
   thing, as `outbound api` does without a server), `--drainers` at once, timed per part. `--profile` also runs
   cProfile in every thread and prints the engine's own hot spots (the timers then include its cost).
Prints rates as ratios to the bare client. Sums of times across threads can exceed the wall time.
"""

import argparse
import asyncio
import cProfile
import gc
import json
import os
import pstats
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scaleout import ROOT, TOKEN, free_port, fresh_database, wait_for, write_config  # noqa: E402


def with_create(config: Path, create: str) -> Path:
    """The bench's config with `scim2.create` set (`lookup` looks each new user up first, as before)."""
    config.write_text(config.read_text().replace("      auth:", f"      create: {create}\n      auth:", 1))
    return config

SCIM_SERVER = """
import sys, time
sys.path.insert(0, {root!r})
from sandbox.scim import ScimSandbox
s = ScimSandbox(token={token!r}).start()
print(s.url, flush=True)
while True:
    time.sleep(3600)
"""

SENDER = """
import sys
sys.path.insert(0, {bench!r})
import scaleout
from scaleout import make_event, send_all
scaleout.TOKEN = {token!r}
send_all({base!r}, [make_event(i, {run!r}) for i in range({n})], {clients})
"""


class Timers:
    """Seconds and calls per named part, from any thread."""

    def __init__(self):
        self.seconds, self.calls, self._lock = defaultdict(float), Counter(), threading.Lock()
        self.spans: list[tuple[float, float, str]] = []  # (start, end, name) of the parts worth a timeline

    def add(self, name: str, seconds: float, calls: int = 1) -> None:
        end = time.perf_counter()
        with self._lock:
            self.seconds[name] += seconds
            self.calls[name] += calls
            if not name.startswith(("store", "prefect event", "prefect log", "gc:")):
                self.spans.append((end - seconds, end, name))

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name if isinstance(name, str) else name(*args, **kwargs), time.perf_counter() - t0)
        timed.__wrapped__ = fn
        return timed

    def wrap_async(self, name, fn):
        async def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.add(name(*args, **kwargs), time.perf_counter() - t0)
        return timed

    def clear(self) -> None:
        self.seconds.clear()
        self.calls.clear()
        self.spans.clear()


T = Timers()
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}")


def _prefect_call(self, request, *a, **k) -> str:
    return f"prefect {request.method} {_ID.sub('{id}', request.url.path.split('/api', 1)[-1])}"


def _target_call(self, request, *a, **k) -> str:
    path = request.path_url.split("/v2", 1)[-1]
    kind = path.split("?")[0]
    kind = re.sub(r"/Users/[^/]+", "/Users/{id}", kind)
    if "filter=" in path:
        kind += "?filter"
    elif "startIndex=" in path or "count=" in path:
        kind += "?page"
    return f"target {request.method} {kind}"


def _statement(conn, cursor, statement, *a) -> str:
    words = statement.split()
    verb = words[0].upper() if words else "?"
    table = ""
    for key in ("INTO", "UPDATE", "FROM"):
        if key in (w.upper() for w in words[:12]):
            i = [w.upper() for w in words].index(key)
            table = words[i + 1 if key != "UPDATE" or verb != "UPDATE" else 1].strip('"(') if i + 1 < len(words) else ""
            break
    return f"store {verb} {table}"


def instrument() -> None:
    """Timers around the parts a batch is made of (patched on the classes and module attributes)."""
    import prefect.client.base as prefect_http
    import requests
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    import importlib.util

    import flows.provision as fp
    import tasks.desired
    import tasks.provision
    import tasks.readback

    # The ingest moved from deployments/ to models/; older versions (for before/after runs) have the first.
    ingest = importlib.import_module("models.ingest" if importlib.util.find_spec("models.ingest")
                                     else "deployments.ingest")
    ingest.accept = T.wrap("accept (validate + store, one event)", ingest.accept)
    if hasattr(ingest, "GroupCommit"):  # (absent from older versions)
        ingest._stage_all = T.wrap("accept: apply + add one group's events", ingest._stage_all)
        ingest.GroupCommit._commit = staticmethod(T.wrap("accept: one group's transaction", ingest.GroupCommit._commit))
    fp.claim = T.wrap("claim", fp.claim)
    fp.finish = T.wrap("finish (event statuses)", fp.finish)
    fp.run_batch = T.wrap("run_batch (the four tasks)", fp.run_batch)
    for module, name in ((tasks.desired, "resolve_policy"), (tasks.desired, "generate_username"),
                         (tasks.provision, "provision"), (tasks.readback, "reconcile")):
        task = getattr(module, name)
        task.fn = T.wrap(f"task {task.name}", task.fn)
    prefect_http.PrefectHttpxSyncClient.send = T.wrap(_prefect_call, prefect_http.PrefectHttpxSyncClient.send)
    prefect_http.PrefectHttpxAsyncClient.send = T.wrap_async(_prefect_call, prefect_http.PrefectHttpxAsyncClient.send)
    EventsWorker.send = T.wrap("prefect event emitted", EventsWorker.send)
    APILogWorker.send = T.wrap("prefect log record sent", APILogWorker.send)
    requests.Session.send = T.wrap(_target_call, requests.Session.send)
    collecting = {}

    def _gc(phase, info):  # the collector stops every thread: its pauses are a part of their own
        if phase == "start":
            collecting["t"] = time.perf_counter()
        elif "t" in collecting:
            T.add(f"gc: generation {info['generation']} collection", time.perf_counter() - collecting.pop("t"))

    gc.callbacks.append(_gc)
    started = threading.local()

    @event.listens_for(Engine, "before_cursor_execute")
    def _before(conn, cursor, statement, *a):
        started.t = time.perf_counter()

    @event.listens_for(Engine, "after_cursor_execute")
    def _after(conn, cursor, statement, parameters, context, executemany):
        T.add(_statement(conn, cursor, statement) + (" (many)" if executemany else ""),
              time.perf_counter() - getattr(started, "t", time.perf_counter()))


def report(title: str, wall: float) -> None:
    print(f"\n{title} (wall {wall:.2f} s; seconds summed over threads)")
    for name in sorted(T.seconds, key=lambda n: -T.seconds[n]):
        print(f"  {name:<60} {T.seconds[name]:8.2f} s {T.calls[name]:7d} calls")


def timeline(first: float, limit: int = 60) -> None:
    """When each part ran, from the drain's start (repeated target/Prefect calls of one kind run together)."""
    print("\ntimeline (s from the drain's start: start → end, name)")
    merged: list[list] = []
    for start, end, name in sorted(T.spans):
        if merged and merged[-1][2] == name and not name.startswith(("task", "run_batch", "claim", "finish")) \
                and start <= merged[-1][1] + 0.05:
            merged[-1][1], merged[-1][3] = max(merged[-1][1], end), merged[-1][3] + 1
        else:
            merged.append([start, end, name, 1])
    for start, end, name, count in merged[:limit]:
        print(f"  {start - first:7.2f} → {end - first:7.2f}  {name}" + (f" ×{count}" if count > 1 else ""))


@contextmanager
def scim_process():
    token = uuid.uuid4().hex
    proc = subprocess.Popen([sys.executable, "-c", SCIM_SERVER.format(root=str(ROOT), token=token)],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        url = proc.stdout.readline().strip()
        yield url, token
    finally:
        proc.terminate()
        proc.wait(10)


def users_in_target(url: str, token: str) -> int:
    import httpx

    answer = httpx.get(f"{url}/Users", params={"count": 0}, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    return answer.json()["totalResults"]


def bare_bulk(url: str, token: str, n: int, prefix: str = "bare") -> float:
    """Users/s of a sequential POST /Bulk loop, 100 creates per request."""
    import httpx

    run = prefix + uuid.uuid4().hex[:6]
    with httpx.Client(headers={"Authorization": f"Bearer {token}", "Content-Type": "application/scim+json"},
                      timeout=60) as client:
        started = time.perf_counter()
        for first in range(0, n, 100):
            ops = [{"method": "POST", "path": "/Users", "bulkId": f"b{i}",
                    "data": {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": f"{run}{i}",
                             "externalId": f"{run}{i}", "name": {"givenName": "Bare", "familyName": f"U{i}"},
                             "emails": [{"value": f"{run}{i}@example.com", "primary": True}], "active": True}}
                   for i in range(first, min(n, first + 100))]
            answer = client.post(f"{url}/Bulk", content=json.dumps(
                {"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"], "Operations": ops}))
            answer.raise_for_status()
        return n / (time.perf_counter() - started)


def accept_phase(config_path: Path, n: int, clients: int, run: str) -> tuple[float, float]:
    """Wall seconds of the burst, and this process's CPU seconds in it (the API's own work: the
    senders run in a child process). CPU per event is the steadier figure on a loaded machine."""
    import uvicorn

    from deployments.api import create_app
    from models.config import load_config

    port = free_port()
    app = create_app(load_config(config_path), str(config_path), dispatch=lambda *a: "counted")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 30, 0.05, "the event API")
    try:
        started, cpu = time.perf_counter(), time.process_time()
        subprocess.run([sys.executable, "-c", SENDER.format(bench=str(Path(__file__).parent),
                                                            base=f"http://127.0.0.1:{port}", run=run, n=n,
                                                            clients=clients, token=TOKEN)], check=True)
        return time.perf_counter() - started, time.process_time() - cpu
    finally:
        server.should_exit = True
        thread.join(60)


def drain_phase(config_path: Path, drainers: int) -> float:
    from prefect import tags

    from flows.provision import provision_user

    def one():
        with tags("trigger:event", "connector:app"):
            asyncio.run(provision_user(config_path=str(config_path), return_state=True))

    threads = [threading.Thread(target=one, name=f"drain-{i}") for i in range(drainers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def hot_spots(profiles: list[cProfile.Profile], top: int = 30) -> None:
    stats = pstats.Stats(profiles[0])
    for p in profiles[1:]:
        stats.add(p)
    waits = ("acquire", "wait", "select", "poll", "sleep", "recv", "recv_into", "accept", "_worker", "get")
    rows = [(fn, st) for fn, st in stats.stats.items() if fn[2].strip("<>").split(" of ")[0].split(".")[-1]
            not in waits]
    print(f"\nhot spots by own time (cProfile in every thread; waiting excluded), top {top}")
    for (file, line, name), (cc, nc, tt, ct, callers) in sorted(rows, key=lambda r: -r[1][2])[:top]:
        where = file.replace(str(ROOT) + "/", "").split("site-packages/")[-1]
        print(f"  {tt:7.2f} s own {ct:8.2f} s cum {nc:8d} calls  {where}:{line} {name}")
    for title, mine in (("the engine's own functions", lambda f: ".venv" not in f and "bench/" not in f),
                        ("Prefect's functions", lambda f: "site-packages/prefect/" in f)):
        rows = [(fn, st) for fn, st in stats.stats.items() if fn[0].startswith(str(ROOT)) and mine(fn[0])]
        print(f"\n{title} by cumulative time, top {top}")
        for (file, line, name), (cc, nc, tt, ct, callers) in sorted(rows, key=lambda r: -r[1][3])[:top]:
            where = file.replace(str(ROOT) + "/", "").split("site-packages/")[-1]
            print(f"  {ct:8.2f} s cum {tt:7.2f} s own {nc:8d} calls  {where}:{line} {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--drainers", type=int, default=1)
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--accept-only", action="store_true", help="stop after the accepting phase")
    parser.add_argument("--existing", type=int, default=0, help="accounts put in the target before the burst")
    parser.add_argument("--create", choices=["optimistic", "lookup"], default="optimistic",
                        help="scim2.create of the connector (lookup: each new user looked up first, as before)")
    args = parser.parse_args()
    n = args.events
    with tempfile.TemporaryDirectory(prefix="outbound-profile-") as tmp, scim_process() as (url, token), \
            (fresh_database() if args.store == "postgres" else _sqlite(Path(tmp))):
        tmp = Path(tmp)
        from deployments.prefect_api import ensure_prefect_api, launch_prefect_api

        t0 = time.perf_counter()
        launch_prefect_api()  # as `outbound api` does, before Prefect is imported
        from models.db import upgrade

        os.environ["PREFECT_API_URL"] = ensure_prefect_api()
        prefect_start = time.perf_counter() - t0
        upgrade()
        config_path = with_create(write_config(tmp, url=url, token=token), args.create)
        bare = bare_bulk(url, token, n)
        print(f"bare client: POST /Bulk, 100 creates per request, sequential: {bare:.0f} users/s; "
              f"temporary Prefect API started in {prefect_start:.1f} s")
        if args.existing:
            bare_bulk(url, token, args.existing, prefix="existing")
        print(f"the target holds {users_in_target(url, token)} accounts before the burst")
        instrument()
        run = uuid.uuid4().hex[:4]
        accepting, cpu = accept_phase(config_path, n, args.clients, run)
        print(f"accepting: {n} POST /v1/events from {args.clients} clients in {accepting:.2f} s = "
              f"{n / accepting:.0f} events/s ({n / accepting / bare:.2f} × bare); "
              f"the API's CPU {cpu * 1000 / n:.2f} ms per event")
        report("accepting", accepting)
        if args.accept_only:
            return 0
        T.clear()
        profiles: list[cProfile.Profile] = []
        if args.profile:
            def start_profile(*_):
                p = cProfile.Profile()
                profiles.append(p)
                p.enable()
            threading.setprofile(start_profile)
            start_profile()
        from flows.warm import warm_up

        warm_up()  # as `outbound api` does at its start: the first batch's imports are not a batch's cost
        before = users_in_target(url, token)
        drain_started, drain_cpu = time.perf_counter(), time.process_time()
        draining = drain_phase(config_path, args.drainers)
        drain_cpu = time.process_time() - drain_cpu  # the drain's own (the target and Prefect's API run apart)
        for p in profiles:
            p.disable()
        threading.setprofile(None)
        made = users_in_target(url, token) - before
        print(f"\ndraining: {made} of {n} accounts made in {draining:.2f} s = {made / draining:.0f} users/s "
              f"({made / draining / bare:.2f} × bare); accept + drain = {n / (accepting + draining):.0f} events/s "
              f"({n / (accepting + draining) / bare:.2f} × bare); the drain's CPU {drain_cpu:.2f} s "
              f"({drain_cpu * 1000 / max(made, 1):.2f} ms per user)")
        report("draining", draining)
        timeline(drain_started)
        if profiles:
            hot_spots(profiles)
        return 0 if made == n else 1


@contextmanager
def _sqlite(tmp: Path):
    os.environ["OUTBOUND_DATABASE_URL"] = f"sqlite:///{tmp}/state.db"
    yield os.environ["OUTBOUND_DATABASE_URL"]


if __name__ == "__main__":
    raise SystemExit(main())
