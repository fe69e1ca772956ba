"""The production topology under a burst: no event left behind, no account twice.

The small run of `bench/scaleout.py`: a Prefect server on PostgreSQL with the database pool settings
docs/operations.md gives for production, the `drain-events` and `sweep-events` deployments on two
process workers, a PostgreSQL state store, and a burst of events posted through the event API
(dispatch: prefect) from 8 clients. Every event must end succeeded, with exactly one SCIM account
per user. The bench runs in its own process: it points PREFECT_API_URL and the state store at the
servers it starts, and stops every process it started. The 2,000-event run is
`.venv/bin/python bench/scaleout.py --events 2000 --workers 1 2`.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

EVENTS = 200
ROOT = Path(__file__).resolve().parent.parent
# docs/operations.md, "Prefect server database pool": the production column.
PRODUCTION_POOL = {"PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE": "20",
                   "PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW": "20",
                   "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_TIMEOUT": "45",
                   "PREFECT_SERVER_DATABASE_TIMEOUT": "30",
                   "PREFECT_SERVER_DATABASE_CONNECTION_TIMEOUT": "15"}


def test_a_burst_through_the_api_and_drain_events_on_workers_leaves_no_event_behind():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "OUTBOUND_DATABASE_URL"))}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "scaleout.py"), "--events", str(EVENTS),
                           "--workers", "2", "--clients", "8", "--timeout", "120"],
                          env={**env, **PRODUCTION_POOL}, cwd=ROOT, capture_output=True, text=True, timeout=280)
    out = done.stdout + done.stderr[-3000:]
    assert done.returncode == 0, out
    statuses = re.search(r"event statuses (\{.*\})", out)
    assert statuses and statuses.group(1) == f"{{'succeeded': {EVENTS}}}", out  # 0 events not succeeded
    assert f"SCIM accounts: {EVENTS} for {EVENTS} users; duplicates 0; missing 0" in out, out
    print("\n" + "\n".join(line for line in done.stdout.splitlines() if not line.startswith("flow runs")))
