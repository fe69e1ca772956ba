"""Scale out on one machine: a Prefect server, two process workers, PostgreSQL, N events, one account each.

    .venv/bin/python bench/scaleout.py [--events 200] [--workers 2]

Starts a Prefect server (temporary PREFECT_HOME, free port), creates the `outbound` process work
pool, deploys `provision-user` and `sweep-events` (threshold 90 s) from prefect.yaml, starts the
workers, makes a fresh PostgreSQL database the state store, emits the events through the event
API (dispatch: prefect), waits for every event to finish and checks that the SCIM sandbox holds
exactly one account per user.
Everything it starts is stopped at the end. The helpers here are shared with bench/latency.py.
"""

import argparse
import contextlib
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
def prefect_server(start, home: Path):
    """A Prefect server on a free port with its own PREFECT_HOME; sets PREFECT_API_URL here too."""
    import httpx

    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
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
def fresh_database():
    """A new PostgreSQL database on 127.0.0.1:5432 as the state store, dropped afterwards."""
    import psycopg

    name = f"outbound_bench_{uuid.uuid4().hex[:8]}"
    admin = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    os.environ["OUTBOUND_DATABASE_URL"] = url
    try:
        yield url
    finally:
        from models.db import dispose_all

        dispose_all()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def write_config(directory: Path, scim) -> Path:
    os.environ["BENCH_SCIM_TOKEN"], os.environ["BENCH_API_TOKEN"] = scim.token, TOKEN
    path = directory / "outbound.yaml"
    path.write_text(f"""tenant_domain: example.com
retry: {{attempts: 6, base_delay: 0.2, max_delay: 5, jitter: 0.5}}
api: {{token: env:BENCH_API_TOKEN}}
connectors:
  - name: app
    type: scim2
    scim2:
      base_url: {scim.url}
      auth: {{type: bearer, token: env:BENCH_SCIM_TOKEN}}
""")
    return path


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


def event_counts() -> dict[str, int]:
    from sqlmodel import func, select

    from models.db import session_scope
    from models.tables import Event

    with session_scope() as session:
        return dict(session.exec(select(Event.status, func.count()).group_by(Event.status)).all())


def env_for_children(home: Path, **extra) -> dict:
    return {**os.environ, "PREFECT_HOME": str(home), **extra}


SWEEP_AFTER = 90  # seconds an event may stay unfinished before the sweeper runs it again


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()

    import httpx
    from prefect.client.orchestration import get_client

    from sandbox.scim import ScimSandbox

    with tempfile.TemporaryDirectory(prefix="outbound-scaleout-") as tmp, processes() as start, \
            ScimSandbox() as scim, fresh_database() as db_url:
        tmp = Path(tmp)
        config = write_config(tmp, scim)
        with prefect_server(start, tmp / "prefect") as api_url:
            print(f"prefect server {api_url}; state store {db_url.rsplit('/', 1)[-1]}; SCIM {scim.url}")
            env = env_for_children(tmp / "prefect", OUTBOUND_CONFIG=str(config), PREFECT_WORKER_QUERY_SECONDS="1",
                                   PREFECT_WORKER_PREFETCH_SECONDS="5")
            subprocess.run([str(BIN / "prefect"), "work-pool", "create", "outbound", "--type", "process"],
                           env=env, cwd=ROOT, check=True, capture_output=True)
            subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "provision-user"],
                           env=env, cwd=ROOT, check=True, capture_output=True)
            # The sweeper, as in production (every minute), with a shorter threshold for the bench: a
            # flow run that Prefect failed to start (a 503 under load) leaves its event in the outbox.
            subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "sweep-events",
                            "--param", f"older_than_seconds={SWEEP_AFTER}"],
                           env=env, cwd=ROOT, check=True, capture_output=True)
            from models.db import upgrade

            upgrade()  # migrate once, before the workers race to
            for n in range(args.workers):
                start([str(BIN / "prefect"), "worker", "start", "--pool", "outbound", "--name", f"bench-worker-{n}",
                       "--type", "process"], env, tmp / f"worker-{n}.log")
            time.sleep(3)
            run = uuid.uuid4().hex[:4]
            events = [make_event(i, run) for i in range(args.events)]
            with event_api(config, "prefect") as base, httpx.Client(timeout=30) as client:
                started = time.monotonic()
                for ev in events:
                    post(client, base, ev)
                sent = time.monotonic() - started
                print(f"{args.events} events accepted in {sent:.1f}s ({args.events / sent:.1f}/s)")
                wait_for(lambda: sum(v for k, v in event_counts().items() if k in ("succeeded", "failed"))
                         >= args.events, args.timeout, 2, "every event to finish")
                elapsed = time.monotonic() - started
            counts = event_counts()
            names = [u["userName"] for u in scim.users()]
            expected = {ev["user"]["username"] for ev in events}
            duplicates = len(names) - len(set(names))
            print(f"{args.events} events on {args.workers} workers: {elapsed:.1f}s end to end, "
                  f"{args.events / elapsed:.2f} events/s; event statuses {counts}")
            print(f"SCIM accounts: {len(names)} for {len(expected)} users; duplicates {duplicates}; "
                  f"missing {len(expected - set(names))}")
            workers = [len([l for l in (tmp / f'worker-{n}.log').read_text().splitlines() if "Flow run 'provision" in l and 'Finished in state Completed' in l])
                       for n in range(args.workers)]
            print(f"flow runs completed per worker (from their logs): {workers}")
            with get_client(sync_client=True) as client:
                crashed = [r for r in client.read_flow_runs(limit=200) + client.read_flow_runs(limit=200, offset=200)
                           if r.state_type and r.state_type.value in ("CRASHED", "FAILED")]
            print(f"flow runs that Prefect failed to start or that crashed: {len(crashed)} "
                  f"(their events stayed in the outbox for the sweeper)")
            ok = duplicates == 0 and set(names) == expected and counts.get("succeeded") == args.events
            print("OK: exactly one account per user" if ok else "FAILED")
            return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
