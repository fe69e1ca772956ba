"""End to end: from a user added to slapd to the account in the SCIM sandbox, through the scheduled pull.

    .venv/bin/python bench/ldap_e2e.py [--interval 20] [--users 4] [--seed 200]

What runs is what production runs, in one process: the pull-directory flow every `--interval`
seconds (the deployment's schedule is 300 s; a shorter one here only makes the bench quicker), and
the drain-events flow watching the outbox (poll 0.25 s) and provisioning what the pull stored, to a
real scim2-server. A Prefect test server (temporary, ~14 s to start) records the runs, a throwaway
SQLite file is the store, and slapd (sandbox/slapd.py) holds `--seed` users before the first pull.

Each of `--users` people is added at a random moment between two pulls; the bench prints the delay
from its ldapadd to its account being visible in the sandbox, split into the wait for the next pull
(at most one interval) and what the pull and the drain took after it began, which the target
(one pull interval + 5 s) allows 5 s.
"""

import argparse
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # the runs' own lines would bury the figures

import yaml  # noqa: E402

from sandbox.slapd import GROUPS, PEOPLE, SERVICE_DN, SERVICE_PASSWORD, Slapd  # noqa: E402


def write_config(workdir: Path, ldap_url: str, scim) -> Path:
    data = {"tenant_domain": "example.com",
            "sources": {"ldap": {"url": ldap_url, "bind": {"dn": SERVICE_DN, "password": "env:BENCH_LDAP_PASSWORD"},
                                 "base_dn": PEOPLE, "group_base_dn": GROUPS, "page_size": 500}},
            "connectors": [{"name": "app", "type": "scim2", "scim2": {
                "base_url": scim.url, "auth": {"type": "bearer", "token": "env:BENCH_SCIM_TOKEN"}}}]}
    path = workdir / "outbound.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def main(interval: float, users: int, seed: int) -> None:
    from prefect.testing.utilities import prefect_test_harness

    from models.db import dispose_all, upgrade
    from sandbox.scim import ScimSandbox

    workdir = Path(tempfile.mkdtemp(prefix="outbound-ldap-e2e-"))
    os.environ.update(OUTBOUND_DATABASE_URL=f"sqlite:///{workdir}/state.db", BENCH_LDAP_PASSWORD=SERVICE_PASSWORD,
                      PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    upgrade()
    with Slapd(size_limit=500) as directory, ScimSandbox() as scim, prefect_test_harness(server_startup_timeout=120):
        from flows.pull import pull_directory

        os.environ["BENCH_SCIM_TOKEN"] = scim.token
        config = write_config(workdir, directory.url, scim)
        for i in range(seed):
            directory.add_person(f"seed{i:05d}")
        total = (users + 2) * interval + 60
        # The drainer in a process of its own, as the drain-events deployment runs: one thread of this
        # one runs flows (Python 3.11.7's gh-106905: no compiling in two threads at once).
        from prefect.settings import PREFECT_API_URL

        root = str(Path(__file__).resolve().parent.parent)
        code = (f"import asyncio, sys; sys.path.insert(0, {root!r}); from flows.provision import drain_events; "
                f"asyncio.run(drain_events(config_path={str(config)!r}, run_for_seconds={total}, poll_seconds=0.25))")
        drainer = subprocess.Popen([sys.executable, "-c", code], cwd=root, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(),
                                                                  "PYTHONPATH": root})
        pulls: list[tuple[float, float]] = []  # (began, ended), monotonic
        stop = threading.Event()

        def schedule():
            while not stop.is_set():
                began = time.monotonic()
                pull_directory(config_path=str(config))
                pulls.append((began, time.monotonic()))
                stop.wait(max(0.0, began + interval - time.monotonic()))

        scheduler = threading.Thread(target=schedule, daemon=True)
        scheduler.start()
        t = time.monotonic()
        while len({u["userName"] for u in scim.users()}) < seed:  # the first (full) pull, provisioned
            if time.monotonic() - t > 600:
                raise SystemExit(f"the {seed} seeded users did not reach the sandbox in 600 s")
            time.sleep(0.5)
        print(f"first pull of {seed} users provisioned in {time.monotonic() - t:.1f} s (not timed below)")
        rng = random.Random(20)
        rows = []
        for n in range(users):
            time.sleep(rng.uniform(0, interval))
            name = f"new{n:03d}"
            added = time.monotonic()
            directory.add_person(name, "New", f"Person{n}")
            while name not in {u["userName"] for u in scim.users()}:
                if time.monotonic() - added > interval + 120:
                    raise SystemExit(f"{name} did not reach the sandbox in {interval + 120:.0f} s")
                time.sleep(0.05)
            seen = time.monotonic()
            began = next(b for b, _ in pulls if b >= added) if any(b >= added for b, _ in pulls) else added
            rows.append((name, seen - added, began - added, seen - began))
        stop.set()
        drainer.terminate()
        drainer.wait(30)
        print(f"pull interval {interval:.0f} s; drain-events polling every 0.25 s; scim2-server target")
        for name, delay, wait, work in rows:
            print(f"  {name}: {delay:5.2f} s from ldapadd to the SCIM account = {wait:5.2f} s waiting for the "
                  f"next pull + {work:4.2f} s pull and drain")
        worst = max(r[3] for r in rows)
        print(f"worst pull + drain after the pull began: {worst:.2f} s (target: within one interval + 5 s, "
              f"{'met' if worst <= 5 else 'NOT met'}); worst total {max(r[1] for r in rows):.2f} s "
              f"for an interval of {interval:.0f} s")
    dispose_all()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--interval", type=float, default=20)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--seed", type=int, default=200)
    args = parser.parse_args()
    main(args.interval, args.users, args.seed)
