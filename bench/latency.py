"""Latency from the event API's 202 to the account being visible in the SCIM sandbox: p50/p95.

    .venv/bin/python bench/latency.py [--events 100] [--served-events 100] [--rate 2]

Two paths, each against a Prefect server (temporary PREFECT_HOME, free port) and a fresh
PostgreSQL state store: `in-process` (the API's own drainer provisions what it stores) and
`served` (the API only stores; `outbound serve` runs the `drain-events` deployment, which watches
the outbox). Events are sent at `--rate` per second; each is timed on its own.
"""

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scaleout import (BIN, env_for_children, event_api, fresh_database, make_event, post,  # noqa: E402
                      prefect_server, processes, wait_for, write_config)


def measure(base: str, scim, n: int, rate: float, timeout: float) -> list[float]:
    """Send n events at `rate`/s; return seconds from each 202 to its account appearing in the sandbox."""
    import httpx

    run = uuid.uuid4().hex[:4]
    accepted_at: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = threading.Event()

    def watch():
        while not done.is_set():
            now = time.monotonic()
            for r in list(scim.storage.resources):
                name = getattr(r, "user_name", None)
                if name in accepted_at and name not in seen:
                    seen[name] = now
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with httpx.Client(timeout=30) as client:
        for i in range(n):
            ev = make_event(i, run)
            post(client, base, ev)
            accepted_at[ev["user"]["username"]] = time.monotonic()
            time.sleep(max(0.0, 1 / rate))
    try:
        wait_for(lambda: len(seen) >= n, timeout, 0.2, f"{n} accounts")
    finally:
        done.set()
        watcher.join()
    return [seen[u] - accepted_at[u] for u in accepted_at if u in seen]


def report(label: str, latencies: list[float]) -> None:
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    print(f"{label:<12} n={len(latencies):<4} p50={q[49]:.2f}s p95={q[94]:.2f}s "
          f"min={min(latencies):.2f}s max={max(latencies):.2f}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100, help="events through the in-process path")
    parser.add_argument("--served-events", type=int, default=100, help="events through the served deployment")
    parser.add_argument("--rate", type=float, default=1.0, help="events per second (in-process)")
    parser.add_argument("--served-rate", type=float, default=1.0, help="events per second (served)")
    args = parser.parse_args()

    from models.db import upgrade
    from sandbox.scim import ScimSandbox

    with tempfile.TemporaryDirectory(prefix="outbound-latency-") as tmp, processes() as start:
        tmp = Path(tmp)
        with prefect_server(start, tmp / "prefect") as api_url:
            print(f"prefect server {api_url}")
            if args.events:
                with ScimSandbox() as scim, fresh_database():
                    config = write_config(tmp, scim)
                    upgrade()
                    with event_api(config, "in-process") as base:
                        report("in-process", measure(base, scim, args.events, args.rate, 300))
            if args.served_events:
                with ScimSandbox() as scim, fresh_database():
                    config = write_config(tmp, scim)
                    upgrade()
                    env = env_for_children(tmp / "prefect", PREFECT_RUNNER_POLL_FREQUENCY="1")
                    start([str(BIN / "outbound"), "serve", "--config", str(config)], env, tmp / "serve.log")

                    def registered():
                        from prefect.client.orchestration import get_client

                        with get_client(sync_client=True) as c:
                            return next((d for d in c.read_deployments() if d.name == "drain-events"), None)

                    drainer = wait_for(registered, 120, 1, "outbound serve to register its deployments")
                    from prefect.client.orchestration import get_client

                    with get_client(sync_client=True) as c:  # start one now rather than at the next minute
                        c.create_flow_run_from_deployment(drainer.id)
                    time.sleep(5)
                    with event_api(config, "prefect") as base:
                        report("served", measure(base, scim, args.served_events, args.served_rate, 900))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
