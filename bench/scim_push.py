"""SCIM creates pushed by 8 clients, against the same number of users through /v1/events, in one run.

    .venv/bin/python bench/scim_push.py [--users 400] [--clients 8]

`outbound api --dispatch in-process` in a subprocess, a fresh PostgreSQL state store and a SCIM
sandbox as the target. First `--users` user.created events are POSTed to /v1/events from
`--clients` threads; then as many other users are pushed to /scim/v2/Users the way Entra ID does
it (`GET /Users?filter=userName eq "..."`, then `POST /Users`). Each clock runs from the first
request until every account of that half exists on the sandbox. Prints users/s for both and the
SCIM push's ratio to the event path's.
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from burst import accounts_of  # noqa: E402
from scaleout import api_process, fresh_database, make_event, processes, send_all, wait_for, write_config  # noqa: E402

SCIM_TOKEN = "bench-scim-" + uuid.uuid4().hex


def push_all(base: str, names: list[str], clients: int) -> None:
    """Entra ID's create: look the userName up, then POST the user; from `clients` threads."""
    import httpx

    queue, lock, errors = list(reversed(names)), threading.Lock(), []
    headers = {"Authorization": f"Bearer {SCIM_TOKEN}", "Content-Type": "application/scim+json"}

    def pusher():
        with httpx.Client(base_url=f"{base}/scim/v2", headers=headers, timeout=60, trust_env=False) as client:
            while True:
                with lock:
                    if not queue or errors:
                        return
                    name = queue.pop()
                found = client.get("/Users", params={"filter": f'userName eq "{name}"'})
                created = client.post("/Users", content=json.dumps({
                    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name,
                    "externalId": f"ext-{name}", "active": True,
                    "emails": [{"value": f"{name}@example.com", "type": "work", "primary": True}],
                    "name": {"givenName": "Bench", "familyName": name}}))
                if found.status_code != 200 or created.status_code != 201:
                    errors.append(f"{name}: {found.status_code} / {created.status_code} {created.text[:200]}")

    threads = [threading.Thread(target=pusher) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(errors[0])


def timed(scim, expected: set[str], send) -> float:
    started = time.monotonic()
    send()
    wait_for(lambda: expected <= set(accounts_of(scim)), 1800, 0.1, f"{len(expected)} accounts")
    return time.monotonic() - started


def main() -> int:
    from models.db import upgrade
    from sandbox.scim import ScimSandbox

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    n = args.users
    with tempfile.TemporaryDirectory(prefix="outbound-scim-push-") as tmp, processes() as start, \
            ScimSandbox() as scim, fresh_database() as db_url:
        tmp = Path(tmp)
        os.environ["BENCH_SCIM_SOURCE_TOKEN"] = SCIM_TOKEN
        config = write_config(tmp, scim, api="scim_token: env:BENCH_SCIM_SOURCE_TOKEN")
        upgrade()
        base = api_process(start, config, tmp, db_url)
        run = uuid.uuid4().hex[:4]
        events = [make_event(i, run) for i in range(n)]
        events_s = timed(scim, {e["user"]["username"] for e in events}, lambda: send_all(base, events, args.clients))
        pushed = [f"s{run}{i:04d}" for i in range(n)]
        scim_s = timed(scim, set(pushed), lambda: push_all(base, pushed, args.clients))
        names = accounts_of(scim)
    duplicates = len(names) - len(set(names))
    print(f"/v1/events: {n} users from {args.clients} clients, every account on the target after {events_s:.1f} s "
          f"= {n / events_s:.1f} users/s")
    print(f"/scim/v2:   {n} users (filter, then POST) from {args.clients} clients, every account on the target "
          f"after {scim_s:.1f} s = {n / scim_s:.1f} users/s")
    print(f"SCIM push at {100 * events_s / scim_s:.0f}% of /v1/events' users/s; duplicates {duplicates}")
    return 0 if duplicates == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
