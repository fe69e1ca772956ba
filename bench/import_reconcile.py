"""Import + reconcile of N users as a newcomer runs them, against a bare POST /Bulk loop in the same run.

    .venv/bin/python bench/import_reconcile.py 10000 [--scimmy] [--profile]

1. Bare: a sequential POST /Bulk loop, 100 creates per request, against a fresh SCIM sandbox
   (scim2-server, sandbox/scim.py). Against SCIMMY (`--scimmy`, tests/scimmy: it has no /Bulk), a
   loop of single POSTs, 4 at a time.
2. Engine: a second fresh server of the same kind, a fresh PostgreSQL state store, a CSV of N users;
   `outbound import users.csv`, then `outbound reconcile --yes`, each a process of its own with no
   PREFECT_API_URL (the command starts its temporary Prefect API, as it does for a newcomer). Its
   PREFECT_HOME is migrated once before the clock starts (a newcomer pays that once, not per command).
Prints the bare creates/s, import s, reconcile s and its CPU s (with the temporary Prefect API's), the
requests the target saw, users/s, and the ratio to bare. `--profile` samples the reconcile process (py-spy, wall clock, every thread) and
splits its time: start-up (imports, the temporary Prefect API), planning, listing the target,
POST /Bulk, store writes, Prefect API calls; the shares are thread-seconds, so concurrent chunks
can add up to more than the wall clock. `--timeline` (scim2-server only) prints each request the
target served during the reconcile, from the command's start: when the first one came, how long the
target sat idle between them, and how long the command ran after the last answer.
"""

import argparse
import csv
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from profile_burst import bare_bulk  # noqa: E402
from scaleout import BIN, ROOT, fresh_database, write_config  # noqa: E402

PY_SPY = os.environ.get("PY_SPY") or shutil.which("py-spy") or "/tmp/pyspy/bin/py-spy"
SCIMMY_DIR = ROOT / "tests" / "scimmy"

def _fn(frame: str) -> str:
    """The function's own name in a py-spy frame `Class.method (file:line)`."""
    return frame.split(" (", 1)[0].rsplit(".", 1)[-1]


# (share, test on one frame "function (file:line)"): the innermost frame any test matches names the sample.
RULES = [
    ("start-up: imports", lambda f: _fn(f) == "_find_and_load"),
    ("start-up: temporary Prefect API", lambda f: "prefect_api.py" in f),
    ("waiting (a chunk in flight)", lambda f: _fn(f) == "settle" or "concurrent/futures/_base.py" in f),
    ("store writes", lambda f: "models/runstate.py" in f or "models/db.py" in f or _fn(f) == "session_scope"
     or "(sqlalchemy/" in f or "(psycopg/" in f),
    ("Prefect API calls", lambda f: any(f"(prefect/{p}" in f for p in ("client/", "artifacts", "events/", "task_engine", "flow_engine",
                                                        "concurrency/", "logging/", "states", "results"))),
    ("POST /Bulk", lambda f: _fn(f) in ("apply_batch", "_send_bulk", "_split_after_413")),
    ("listing the target", lambda f: _fn(f) in ("iter_users", "list_users", "snapshot", "_page")),
    ("planning", lambda f: "tasks/plan/" in f or "tasks/desired.py" in f),
    ("idle (the lease keeper)", lambda f: _fn(f) == "keep"),
]
OURS = re.compile(r"\((flows|tasks|connectors|models|deployments)/")  # py-spy names files relative to sys.path


def split(raw: Path, rate: int) -> dict[str, float]:
    """Seconds per share from py-spy's raw output (`frame;frame;… count`, outermost first)."""
    shares: Counter = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if not any(OURS.search(f) or "_find_and_load" in f for f in frames):
            continue  # a thread of Prefect's or the HTTP pool's, idle: not the command's work
        name = next((n for frame in reversed(frames) for n, test in RULES if test(frame)), None)
        if name is None and frames[-1].startswith(("EpollSelector.select", "Condition.wait")):
            name = "waiting (a chunk in flight)"  # the flow's event loop, or a chunk's result
        shares[name or "the rest of the engine"] += int(count)
    return {k: v / rate for k, v in shares.most_common()}


def children_cpu() -> float:
    """CPU seconds of the children waited for so far (a command, and what it started and waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def write_csv(path: Path, n: int) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["username", "email", "given_name", "family_name"])
        for i in range(n):
            writer.writerow([f"user{i:06d}", f"user{i:06d}@example.com", "Bulk", f"U{i}"])


def bare_single(url: str, token: str, n: int) -> float:
    """Creates/s of single POST /Users, 4 at a time (for a server without /Bulk)."""
    import httpx

    run = "bare" + uuid.uuid4().hex[:6]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/scim+json"}
    with httpx.Client(headers=headers, timeout=60, limits=httpx.Limits(max_connections=4)) as client:
        def post(i):
            client.post(f"{url}/Users", content=json.dumps({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": f"{run}{i}",
                "externalId": f"{run}{i}", "name": {"givenName": "Bare", "familyName": f"U{i}"},
                "emails": [{"value": f"{run}{i}@example.com", "primary": True}], "active": True})).raise_for_status()
        started = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(post, range(n)))
        return n / (time.perf_counter() - started)


class Scimmy:
    """The SCIMMY server of tests/scimmy on a free port (as tests/test_group_names.py starts it)."""

    def __enter__(self):
        if shutil.which("node") is None or not (SCIMMY_DIR / "node_modules" / "scimmy").is_dir():
            raise SystemExit("SCIMMY is not installed: npm ci --prefix tests/scimmy")
        self.token = uuid.uuid4().hex
        self.process = subprocess.Popen(["node", str(SCIMMY_DIR / "server.mjs")], stdout=subprocess.PIPE, text=True,
                                        env={**os.environ, "SCIMMY_TOKEN": self.token})
        first = self.process.stdout.readline()
        assert first.startswith("listening "), first
        self.url = f"http://127.0.0.1:{int(first.split()[1])}/v2"
        return self

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.wait(timeout=10)

    def count(self) -> int:
        import httpx

        body = httpx.get(f"{self.url}/Users", params={"count": 1},
                         headers={"Authorization": f"Bearer {self.token}"}).json()
        return int(body["totalResults"])


SERVED: list[tuple[str, str, float, float]] = []  # --timeline: (method, path, started, answered)


def time_requests() -> None:
    """Record when the SCIM sandbox starts and ends each request it serves (in this process)."""
    from sandbox.scim import ScimSandbox

    front = ScimSandbox._front

    def timed(self, environ, start_response):
        started = time.monotonic()
        try:
            return front(self, environ, start_response)
        finally:
            SERVED.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), started, time.monotonic()))

    ScimSandbox._front = timed


def print_timeline(t0: float, t1: float) -> None:
    served = sorted((r for r in SERVED if r[2] >= t0), key=lambda r: r[2])
    for method, path, started, answered in served:
        print(f"  {method:5} {path:28} {started - t0:6.2f} s -> {answered - t0:6.2f} s")
    if not served:
        return
    idle, busy_until = 0.0, served[0][3]
    for _, _, started, answered in served[1:]:
        idle += max(0.0, started - busy_until)
        busy_until = max(busy_until, answered)
    print(f"first request {served[0][2] - t0:.2f} s after the command started; the target idle {idle:.2f} s between "
          f"its first and last answer; the command ran {t1 - busy_until:.2f} s after the last answer")


def server(scimmy: bool):
    from sandbox.scim import ScimSandbox

    return Scimmy() if scimmy else ScimSandbox()


def engine(tmp: Path, n: int, scimmy: bool, profile: bool) -> dict:
    from models.db import upgrade

    with server(scimmy) as scim, fresh_database() as db_url:
        config = write_config(tmp, scim)
        upgrade()
        users = tmp / "users.csv"
        write_csv(users, n)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
        # PYTHONPATH: this checkout's code, whichever checkout installed the shared virtualenv.
        env.update(OUTBOUND_DATABASE_URL=db_url, PREFECT_HOME=str(tmp / "prefect-home"), PYTHONPATH=str(ROOT))
        outbound = [str(BIN / "outbound")]
        # Prefect's database migrated once (the first command a newcomer ever runs pays it, not every command).
        subprocess.run(outbound + ["reconcile", "--config", str(config), "--dry-run"], env=env, cwd=ROOT,
                       check=True, capture_output=True)
        seen_before = 0 if scimmy else len(scim.answered)
        started = time.monotonic()
        subprocess.run(outbound + ["import", str(users), "--config", str(config)], env=env, cwd=ROOT, check=True,
                       capture_output=True)
        imported = time.monotonic() - started
        raw, rate = Path(os.environ.get("BENCH_PROFILE_OUT", tmp / "reconcile.raw")), 100
        spy = [PY_SPY, "record", "--idle", "--rate", str(rate), "--format", "raw", "--output", str(raw), "--"] \
            if profile else []
        t0, cpu0 = time.monotonic(), children_cpu()
        done = subprocess.run(spy + outbound + ["reconcile", "--config", str(config), "--yes"], env=env, cwd=ROOT,
                              capture_output=True, text=True)
        t1 = time.monotonic()
        reconciled, cpu = t1 - t0, children_cpu() - cpu0
        if scimmy:
            accounts, requests = scim.count(), None
        else:
            names = [r.user_name for r in list(scim.storage.resources)
                     if r.meta and r.meta.resource_type == "User"]
            accounts = len(set(names)) if len(names) == len(set(names)) else -1
            requests = Counter(f"{m} {p.split('?')[0].rsplit('/', 1)[-1] if '/Users/' in p else p.split('?')[0]}"
                               for m, p, *_ in scim.answered[seen_before:])
        return {"import": imported, "reconcile": reconciled, "reconcile_cpu": cpu, "exit": done.returncode, "accounts": accounts,
                "requests": requests, "stdout": done.stdout[-2000:], "stderr": done.stderr[-2000:],
                "split": split(raw, rate) if profile and raw.exists() else None, "t0": t0, "t1": t1}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("users", type=int, nargs="?", default=10000)
    parser.add_argument("--scimmy", action="store_true", help="against SCIMMY (node) instead of scim2-server")
    parser.add_argument("--profile", action="store_true", help="split the reconcile's time (py-spy)")
    parser.add_argument("--timeline", action="store_true", help="when the target served each request of the reconcile")
    args = parser.parse_args()
    if args.timeline:
        time_requests()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with server(args.scimmy) as bare_server:
        if args.scimmy:
            bare, how = bare_single(bare_server.url, bare_server.token, args.users), "single POST /Users, 4 at a time"
        else:
            bare, how = bare_bulk(bare_server.url, bare_server.token, args.users), \
                "POST /Bulk, 100 creates per request, sequential"
    with tempfile.TemporaryDirectory(prefix="outbound-import-reconcile-") as tmp:
        r = engine(Path(tmp), args.users, args.scimmy, args.profile)
    total = r["import"] + r["reconcile"]
    kind = "SCIMMY" if args.scimmy else "scim2-server"
    print(f"{kind}, {args.users} users")
    print(f"bare client ({how}): {bare:.0f} creates/s ({args.users / bare:.1f} s)")
    print(f"outbound import: {r['import']:.1f} s; outbound reconcile --yes: {r['reconcile']:.1f} s (exit {r['exit']}), "
          f"{r['reconcile_cpu']:.1f} CPU s (steadier than its wall time on a shared machine)")
    if r["split"]:
        print("reconcile split (thread-seconds, py-spy): " + ", ".join(f"{k} {v:.1f}" for k, v in r["split"].items()))
    if r["requests"] is not None:
        print(f"requests the target answered: {sum(r['requests'].values())} ({dict(r['requests'].most_common(8))})")
    print(f"accounts on the target: {r['accounts']} of {args.users}")
    if args.timeline and not args.scimmy:
        print_timeline(r["t0"], r["t1"])
    print(f"engine {args.users / total:.0f} users/s = {args.users / total / bare:.2f} × bare")
    if r["exit"] or r["accounts"] != args.users:
        print(r["stdout"], r["stderr"], sep="\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
