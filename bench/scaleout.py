"""Scale out on one machine: a Prefect server on PostgreSQL, process workers, N events, one account each.

    .venv/bin/python bench/scaleout.py [--events 2000] [--workers 2] [--clients 16]

Starts a Prefect server (temporary PREFECT_HOME, free port, its database a fresh PostgreSQL
database), creates the `outbound` process work pool, deploys `drain-events` and `sweep-events`
from prefect.yaml, starts the workers, makes another fresh PostgreSQL database the state store,
sends the events through the event API (dispatch: prefect) from `--clients` threads, waits for
every event to finish and checks that the SCIM sandbox holds exactly one account per user.
Everything it starts is stopped at the end. The helpers here are shared with bench/latency.py.
"""

import argparse
import contextlib
from collections import Counter
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
TOKEN = "bench-" + uuid.uuid4().hex


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, every: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def _stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def processes():
    """Start processes in their own groups; stop every one of them (by its id) on the way out."""
    started: list[subprocess.Popen] = []

    def start(args, env, log: Path) -> subprocess.Popen:
        proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in reversed(started):
            _stop(proc)


@contextlib.contextmanager
def prefect_server(start, home: Path, database_url: str | None = None):
    """A Prefect server on a free port with its own PREFECT_HOME (and database); sets PREFECT_API_URL here too."""
    import httpx

    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    if database_url:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    env.pop("PREFECT_API_URL", None)
    start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env,
          home / "server.log")
    url = f"http://127.0.0.1:{port}/api"

    def healthy():
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, 120, 0.5, "the Prefect server")
    os.environ["PREFECT_API_URL"], os.environ["PREFECT_HOME"] = url, str(home)
    yield url


@contextlib.contextmanager
def fresh_database(driver: str = "psycopg", store: bool = True):
    """A new PostgreSQL database on 127.0.0.1:5432 (as the state store unless `store` is false), dropped afterwards."""
    import psycopg

    name = f"outbound_bench_{uuid.uuid4().hex[:8]}"
    admin = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+{driver}://postgres@127.0.0.1:5432/{name}"
    if store:
        os.environ["OUTBOUND_DATABASE_URL"] = url
    try:
        yield url
    finally:
        from models.db import dispose_all

        dispose_all()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def write_config(directory: Path, scim=None, *, url: str = "", token: str = "", api: str = "") -> Path:
    """The benches' config: one SCIM connector (a sandbox, or `url` and `token`); `api` adds to the api section."""
    url, token = (scim.url, scim.token) if scim is not None else (url, token)
    os.environ["BENCH_SCIM_TOKEN"], os.environ["BENCH_API_TOKEN"] = token, TOKEN
    path = directory / "outbound.yaml"
    path.write_text(f"""tenant_domain: example.com
retry: {{attempts: 6, base_delay: 0.2, max_delay: 5, jitter: 0.5}}
api: {{token: env:BENCH_API_TOKEN{", " + api if api else ""}}}
connectors:
  - name: app
    type: scim2
    scim2:
      base_url: {url}
      auth: {{type: bearer, token: env:BENCH_SCIM_TOKEN}}
""")
    return path


def api_process(start, config: Path, tmp: Path, database_url: str) -> str:
    """`outbound api --dispatch in-process` in a process of its own, up (its temporary Prefect API too); its base URL."""
    import httpx

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp / "prefect-api"), OUTBOUND_DATABASE_URL=database_url)
    api = start([str(BIN / "outbound"), "api", "--config", str(config), "--port", str(port),
                 "--dispatch", "in-process"], env, tmp / "api.log")
    base = f"http://127.0.0.1:{port}"

    def up():
        if api.poll() is not None:
            raise RuntimeError(f"the API exited: {(tmp / 'api.log').read_text()[-2000:]}")
        try:
            return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 400, 0.5, "the event API (and its temporary Prefect API)")
    return base


@contextlib.contextmanager
def event_api(config_path: Path, dispatch: str):
    """The event API under uvicorn in a thread; yields its base URL."""
    import uvicorn

    from deployments.api import create_app
    from models.config import load_config

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(load_config(config_path), str(config_path), dispatch=dispatch),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 30, 0.05, "the event API")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)


def make_event(i: int, run: str) -> dict:
    name = f"u{run}{i:04d}"
    return {"id": f"evt-{run}-{i:04d}", "type": "user.created", "trigger": "api",
            "user": {"username": name, "email": f"{name}@example.com", "given_name": "Bench", "family_name": f"U{i}"}}


def post(client, base: str, ev: dict) -> None:
    response = client.post(f"{base}/v1/events", content=json.dumps(ev).encode(),
                           headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    if response.status_code != 202:
        raise RuntimeError(f"{ev['id']}: {response.status_code} {response.text}")


@contextlib.contextmanager
def server_client(api_url: str):
    """A sync Prefect client for the bench's own server (settings read earlier in this process may differ)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        yield client


def send_all(base: str, events: list[dict], clients: int) -> None:
    """POST every event from `clients` threads, as fast as the API takes them."""
    import httpx

    queue, lock = list(reversed(events)), threading.Lock()

    def sender():
        with httpx.Client(timeout=60) as client:
            while True:
                with lock:
                    if not queue:
                        return
                    ev = queue.pop()
                post(client, base, ev)

    threads = [threading.Thread(target=sender) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def event_counts() -> dict[str, int]:
    from sqlmodel import func, select

    from models.db import session_scope
    from models.tables import Event

    with session_scope() as session:
        return dict(session.exec(select(Event.status, func.count()).group_by(Event.status)).all())


def env_for_children(home: Path, **extra) -> dict:
    return {**os.environ, "PREFECT_HOME": str(home), **extra}


def print_timeline(runs) -> None:
    """Each flow run's start (seconds after the first), run time and name: where an end-to-end time went."""
    timed = sorted((r for r in runs if r.start_time), key=lambda r: r.start_time)
    if not timed:
        return
    first = timed[0].start_time
    for r in timed:
        took = r.total_run_time.total_seconds() if r.total_run_time else 0.0
        print(f"  +{(r.start_time - first).total_seconds():6.1f}s  {took:6.2f}s  {r.state_name:<10} {r.name[:90]}")


def run(args, workers: int) -> bool:
    from sandbox.scim import ScimSandbox

    with tempfile.TemporaryDirectory(prefix="outbound-scaleout-") as tmp, processes() as start, \
            ScimSandbox() as scim, fresh_database() as db_url, \
            fresh_database("asyncpg", store=False) as prefect_db:
        tmp = Path(tmp)
        config = write_config(tmp, scim)
        with prefect_server(start, tmp / "prefect", prefect_db) as api_url:
            print(f"prefect server {api_url} on PostgreSQL; state store {db_url.rsplit('/', 1)[-1]}; SCIM {scim.url}")
            env = env_for_children(tmp / "prefect", OUTBOUND_CONFIG=str(config), PREFECT_WORKER_QUERY_SECONDS="1",
                                   PREFECT_WORKER_PREFETCH_SECONDS="5")
            subprocess.run([str(BIN / "prefect"), "work-pool", "create", "outbound", "--type", "process"],
                           env=env, cwd=ROOT, check=True, capture_output=True)
            for name in ("drain-events", "sweep-events"):
                done = subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--name", name],
                                      env=env, cwd=ROOT, capture_output=True, text=True)
                if done.returncode or "successfully created" not in done.stdout:
                    raise RuntimeError(f"prefect deploy {name} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
            from models.db import upgrade

            upgrade()  # migrate once, before the workers race to
            for n in range(workers):
                start([str(BIN / "prefect"), "worker", "start", "--pool", "outbound", "--name", f"bench-worker-{n}",
                       "--type", "process"], env, tmp / f"worker-{n}.log")
            # The drainers start on the minute: the first cron slot may be up to a minute away.
            with server_client(api_url) as client:
                deployment = next(d for d in client.read_deployments() if d.name == "drain-events")
                for _ in range(workers):
                    client.create_flow_run_from_deployment(deployment.id)
            run_id = uuid.uuid4().hex[:4]
            events = [make_event(i, run_id) for i in range(args.events)]
            with event_api(config, "prefect") as base:
                started = time.monotonic()
                send_all(base, events, args.clients)
                sent = time.monotonic() - started
                print(f"{args.events} events accepted in {sent:.1f}s ({args.events / sent:.1f}/s)")
                wait_for(lambda: sum(v for k, v in event_counts().items() if k in ("succeeded", "failed"))
                         >= args.events, args.timeout, 1, "every event to finish")
                elapsed = time.monotonic() - started
            counts = event_counts()
            names = [u["userName"] for u in scim.users()]
            expected = {ev["user"]["username"] for ev in events}
            duplicates = len(names) - len(set(names))
            print(f"{args.events} events on {workers} worker(s): {elapsed:.1f}s end to end, "
                  f"{args.events / elapsed:.1f} events/s; event statuses {counts}")
            print(f"SCIM accounts: {len(names)} for {len(expected)} users; duplicates {duplicates}; "
                  f"missing {len(expected - set(names))}")
            with server_client(api_url) as client:
                from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterStartTime

                runs = client.read_flow_runs(limit=200, flow_run_filter=FlowRunFilter(  # not the scheduler's future runs
                    start_time=FlowRunFilterStartTime(is_null_=False)))
            kinds = Counter(r.name.split(" ")[0] for r in runs)
            print(f"flow runs for {args.events} events: {len(runs)} ({dict(kinds)})")
            if args.timeline:
                print_timeline(runs)
            ok = duplicates == 0 and set(names) == expected and counts.get("succeeded") == args.events
            print("OK: exactly one account per user" if ok else "FAILED")
            return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to run, in turn")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--timeline", action="store_true", help="print every flow run: start, duration, name")
    args = parser.parse_args()
    os.environ["BENCH_API_TOKEN"] = TOKEN
    results = [run(args, n) for n in args.workers]
    return 0 if all(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
