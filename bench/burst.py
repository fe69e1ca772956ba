"""A burst of user.created events through the event API's own process, against the bulk path, in one run.

    .venv/bin/python bench/burst.py [--events 2000] [--clients 16] [--create optimistic|lookup] [--no-bulk-path]

1. Event path: `outbound api --dispatch in-process` in a subprocess (no Prefect server: it starts its
   own temporary Prefect API), a fresh PostgreSQL state store and a SCIM sandbox. `--clients`
   threads POST the events as fast as the API takes them; the clock runs from the first POST until
   every account exists in the sandbox.
2. Bulk path: the same number of other users, `outbound import` of a CSV then `outbound reconcile`,
   against a second sandbox and a second fresh database, timed the same way.
Prints users/s for both, their ratio, duplicates and missing accounts, and the event path as a ratio
to a bare client (POST /Bulk, 100 creates per request, sequential) against the same server first.
"""

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from profile_burst import bare_bulk, with_create  # noqa: E402
from scaleout import (BIN, ROOT, TOKEN, api_process, event_counts, free_port, fresh_database,  # noqa: E402
                      make_event, processes, send_all, wait_for, write_config)


def accounts_of(scim) -> list[str]:
    while True:
        try:  # the server's own threads write the storage while it is read: read again
            resources = list(scim.storage.resources)
            break
        except RuntimeError:
            continue
    return [getattr(r, "user_name", None) for r in resources if r.meta and r.meta.resource_type == "User"]


def senders_alone(n: int, clients: int) -> float:
    """Events/s the same senders post to a server that answers 202 and does nothing (bench/null_server.py)."""
    port = free_port()
    server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("null_server.py")), str(port)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().startswith("listening")
        events = [make_event(i, "null") for i in range(n)]
        started = time.monotonic()
        send_all(f"http://127.0.0.1:{port}", events, clients)
        return n / (time.monotonic() - started)
    finally:
        server.terminate()
        server.wait(10)


def event_path(tmp: Path, n: int, clients: int, start, create: str = "optimistic") -> dict:
    from models.db import upgrade
    from sandbox.scim import ScimSandbox

    with ScimSandbox() as scim, fresh_database() as db_url:
        config = with_create(write_config(tmp, scim), create)
        upgrade()
        bare = bare_bulk(scim.url, scim.token, n)  # the same server, before the engine's users are in it
        floor = senders_alone(n, clients)
        base = api_process(start, config, tmp, db_url)
        run = uuid.uuid4().hex[:4]
        events = [make_event(i, run) for i in range(n)]
        started = time.monotonic()
        send_all(base, events, clients)
        accepted = time.monotonic() - started
        expected = {ev["user"]["username"] for ev in events}
        wait_for(lambda: expected <= set(accounts_of(scim)), 1800, 0.1, f"{n} accounts")
        elapsed = time.monotonic() - started
        wait_for(lambda: event_counts().get("succeeded", 0) + event_counts().get("failed", 0) >= n, 300, 0.5,
                 "every event to be marked finished")
        names = accounts_of(scim)
        runs = sum(1 for line in (tmp / "api.log").read_text().splitlines() if "batch of" in line)
        return {"elapsed": elapsed, "accepted": accepted, "users": n, "bare": bare, "floor": floor,
                "duplicates": len(names) - len(set(names)),
                "missing": len(expected - set(names)), "statuses": event_counts(), "batches_logged": runs,
                "batches": batches()}


def batches() -> list[tuple[int, float, float]]:
    """(events, last received, finished) of each batch, seconds from the first event received (one finish each)."""
    from sqlmodel import func, select

    from models.db import session_scope
    from models.tables import Event

    with session_scope() as session:
        first = session.exec(select(func.min(Event.received_at))).one()
        rows = session.exec(select(func.count(), func.max(Event.received_at), Event.finished_at)
                            .group_by(Event.finished_at).order_by(Event.finished_at)).all()
    return [(count, (last - first).total_seconds(), (done - first).total_seconds()) for count, last, done in rows]


def bulk_path(tmp: Path, n: int) -> dict:
    from models.db import upgrade
    from sandbox.scim import ScimSandbox

    with ScimSandbox() as scim, fresh_database() as db_url:
        config = write_config(tmp, scim)
        upgrade()
        path = tmp / "users.csv"
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["username", "email", "given_name", "family_name"])
            for i in range(n):
                writer.writerow([f"bulk{i:05d}", f"bulk{i:05d}@example.com", "Bulk", f"U{i}"])
        env = {**os.environ, "OUTBOUND_DATABASE_URL": db_url, "PREFECT_HOME": str(tmp / "prefect-bulk")}
        env = {k: v for k, v in env.items() if not k.startswith("PREFECT_API")}
        started = time.monotonic()
        subprocess.run([str(BIN / "outbound"), "import", str(path), "--config", str(config)], env=env, cwd=ROOT,
                       check=True, capture_output=True)
        imported = time.monotonic() - started
        # The reconcile's own Prefect API start-up is not the bulk path's work: start it warm.
        subprocess.run([str(BIN / "outbound"), "reconcile", "--config", str(config), "--dry-run"], env=env, cwd=ROOT,
                       check=True, capture_output=True)
        t0 = time.monotonic()
        done = subprocess.run([str(BIN / "outbound"), "reconcile", "--config", str(config)], env=env, cwd=ROOT,
                              capture_output=True, text=True)
        reconciled = time.monotonic() - t0
        names = accounts_of(scim)
        return {"elapsed": imported + reconciled, "import": imported, "reconcile": reconciled, "users": n,
                "duplicates": len(names) - len(set(names)), "missing": n - len(set(names)), "exit": done.returncode}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--create", choices=["optimistic", "lookup"], default="optimistic",
                        help="scim2.create of the event path's connector")
    parser.add_argument("--no-bulk-path", action="store_true", help="skip the import + reconcile comparison")
    args = parser.parse_args()
    os.environ["BENCH_API_TOKEN"] = TOKEN
    # The `outbound` commands run this checkout's code, not whichever one the shared venv was installed from.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory(prefix="outbound-burst-") as tmp, processes() as start:
        tmp = Path(tmp)
        ev = event_path(tmp, args.events, args.clients, start, args.create)
        print(f"event path: {ev['users']} events from {args.clients} clients accepted in {ev['accepted']:.1f} s; "
              f"every account in the target after {ev['elapsed']:.1f} s = {ev['users'] / ev['elapsed']:.1f} users/s; "
              f"duplicates {ev['duplicates']}, missing {ev['missing']}, statuses {ev['statuses']}, "
              f"batches {ev['batches_logged']}")
        print(f"bare client against the same server: POST /Bulk, 100 creates per request, sequential: "
              f"{ev['bare']:.0f} users/s; event path {ev['users'] / ev['elapsed'] / ev['bare']:.2f} × bare, "
              f"accepting alone {ev['users'] / ev['accepted'] / ev['bare']:.2f} × bare")
        print(f"the same {args.clients} senders posting to a server that answers 202 and does nothing: "
              f"{ev['floor']:.0f} events/s = {ev['floor'] / ev['bare']:.2f} × bare (no event API can accept faster "
              f"with this client on this machine)")
        print("batches (events: last received → finished, s from the first received): " + ", ".join(
            f"{count}: {last:.1f} → {done:.1f}" for count, last, done in ev["batches"]))
    if args.no_bulk_path:
        return 0 if ev["duplicates"] == ev["missing"] == 0 else 1
    with tempfile.TemporaryDirectory(prefix="outbound-bulk-") as tmp:
        bulk = bulk_path(Path(tmp), args.events)
        print(f"bulk path: import {bulk['import']:.1f} s + reconcile {bulk['reconcile']:.1f} s = "
              f"{bulk['users'] / bulk['elapsed']:.1f} users/s; duplicates {bulk['duplicates']}, "
              f"missing {bulk['missing']}, reconcile exit {bulk['exit']}")
    ratio = (ev["users"] / ev["elapsed"]) / (bulk["users"] / bulk["elapsed"])
    print(f"event path at {100 * ratio:.0f}% of the bulk path's users/s")
    return 0 if ev["duplicates"] == ev["missing"] == bulk["duplicates"] == bulk["missing"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
