"""Chaos: provision N users to each sandbox target while a share of its requests fail; check what held.

    .venv/bin/python bench/chaos.py --users 1000 [--rate 0.2] [--kinds 5xx,429,drop,lost] [--chunk 50]
                                    [--events 10] [--targets scim2,google,salesforce] [--seed 7]
                                    [--lose-first 2] [--max-runs 8]
    .venv/bin/python bench/chaos.py --lost-bulk [--repeat 3]     # 200 users, answers to 2 /Bulk lost, 10% 503, 5% 429

Per target: a fresh store (SQLite) holding N users, the target's sandbox failing `rate` of *every*
request (listings, lookups, the token endpoint, batch writes) with a mix of 5xx, 429 +
Retry-After, dropped connections and lost answers (`lost`: served, so a write applies, then the
connection drops before the answer), the answers to the first `--lose-first` batch writes lost
too; the SCIM server keeps no userName unique, so a write resent blind makes a second account.
Faults are drawn per request (seeded by the request itself), so the same requests fail however
the threads interleave, and one identical request fails at most twice. Then the reconcile flow
runs until a run finds nothing to do, and `--events` update events go through the event flow (then
the sweeper). Checked, with the faults switched off:

- every user has exactly one account (accounts counted by externalId / FederationIdentifier) and
  its mapping points at it: duplicates 0 (Google and Salesforce, which refuse a second account
  themselves: no create refused as a duplicate either), users missing 0;
- every try is recorded: each operation has one OperationAttempt row per attempt, and the tries
  that failed on a transient error are at least the faults injected on write requests (a fault
  on a write fails every row that request carried, so the rows recorded are >= the faults);
- nothing is left running: no operation running/retrying, no attempt running, no
  reconciliation run running; every event succeeded (events lost 0).

`--lost-bulk` is the scenario of 200 users imported and reconciled while the answers to the first
two /Bulk requests are lost and 10 % of all requests get 503, 5 % 429: each run printed (status,
outcome_unknown, accounts, duplicates), `--repeat` times with a new seed each.
"""

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote_plus

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tests/targets.py: how each connector entry points at its sandbox
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")

from sandbox.faults import FaultPlan  # noqa: E402

TARGETS = ("scim2", "google", "salesforce")
WRITE = {"POST", "PUT", "PATCH", "DELETE"}
TRANSIENT_CODES = ("transient", "rate_limited", "outcome_unknown")
# Each target's batch write endpoint: where `--lose-first` loses whole answers.
BATCH_PATHS = {"scim2": ("/Bulk",), "google": ("/batch",), "salesforce": ("/composite/sobjects",)}
_where = threading.local()


def request_class(method: str, path: str, query: str = "") -> str:
    """write (carries operations), token (sign-in), lookup (one account or group: by filter, query or id),
    listing (a page of a whole collection), read (anything else: probes, schemas)."""
    if "token" in path:
        return "token"
    if method in WRITE:
        return "write"
    q = unquote_plus(query)
    if "filter=" in q or "query=" in q or " LIMIT " in q or re.search(r"/(Users|users|User|Groups|groups)/[^/]+$", path):
        return "lookup"
    if any(k in q for k in ("startIndex", "pageToken", "maxResults", "q=SELECT")) or "/query/" in path:
        return "listing"
    return "read"


class RecordingPlan(FaultPlan):
    """A FaultPlan that also counts its faults by the class of request they hit, and fails the first
    request of each class in `force_each` (with 503) so every kind of request meets a fault at least once."""

    force_each: tuple[str, ...] = ("token", "lookup", "listing", "read")

    def __post_init__(self):
        super().__post_init__()
        self.hits: Counter = Counter()  # (request class, fault kind) -> n
        self._forced: set[str] = set()

    def draw(self, method: str, path: str = "", key: str = ""):
        cls = getattr(_where, "cls", "?")
        with self._lock:
            forced = self.rate > 0 and cls in self.force_each and cls not in self._forced
            if forced:
                self._forced.add(cls)
        kind = self._count("5xx") if forced else super().draw(method, path, key)
        if kind:
            with self._lock:
                self.hits[(cls, kind)] += 1
        return kind


class _Tap:
    """Wraps a sandbox's FaultInjector: counts requests by class and tells the plan which class it draws for."""

    def __init__(self, injector):
        self.injector, self.plan = injector, injector.plan
        self.counts: Counter = Counter()
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        cls = request_class(environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", ""))
        with self._lock:
            self.counts[cls] += 1
        _where.cls = cls
        return self.injector(environ, start_response)


@contextmanager
def sandbox_for(kind: str, plan: FaultPlan, name: str):
    """Start the target's sandbox with `plan`; yield (sandbox, connector entry as a dict)."""
    import targets

    if kind == "scim2":
        from sandbox.scim import ScimSandbox

        with ScimSandbox(faults=plan, unique_user_names=False) as box:  # only the engine stops a second account
            cfg = targets.scim2_config(box, name=name, env_var=f"CHAOS_{name.upper()}_TOKEN", page_size=1000)
            yield box, cfg.model_dump(mode="json", exclude_unset=True)
    elif kind == "google":
        from sandbox.google import GoogleSandbox

        with GoogleSandbox(faults=plan) as box:
            cfg = targets.google_config(box, name=name, env_var=f"CHAOS_{name.upper()}_KEY")
            yield box, cfg.model_dump(mode="json", exclude_unset=True)
    elif kind == "salesforce":
        from sandbox.salesforce import SalesforceSandbox

        with SalesforceSandbox(faults=plan) as box:
            cfg = targets.salesforce_config(box, name=name)
            yield box, cfg.model_dump(mode="json", exclude_unset=True)
    else:
        raise ValueError(f"unknown target {kind!r}")


@dataclass
class Figures:
    target: str
    users: int
    requests: dict = field(default_factory=dict)  # by class
    faults: dict = field(default_factory=dict)  # by kind
    write_faults: int = 0  # faults that failed a write request (latency excluded: it is served; lost: it applied)
    hits: dict = field(default_factory=dict)  # (request class, fault kind) -> n
    rounds: int = 0  # reconcile flow runs until one found nothing to do
    failed_rounds: int = 0  # runs that ended in an exception (e.g. listing failed after every retry)
    runs: list = field(default_factory=list)  # per reconcile run: what it said, and the target after it
    settled_after: int = 0  # the reconcile run after which every user had one account, mapped (0: never)
    operations: int = 0
    attempts: int = 0  # OperationAttempt rows
    retries: int = 0  # attempts after the first (attempt rows numbered > 1)
    transient_tries: int = 0  # attempt rows that failed on a transient error (5xx, 429, dropped)
    consistent_attempts: bool = True  # every operation's attempts == its attempt rows, last one = its status
    duplicates: int = 0
    duplicate_creates: int = 0  # creates Google / Salesforce refused because the account was there
    missing: int = 0
    bad_mappings: int = 0
    running: int = 0  # operations running/retrying + attempts running + reconciliation runs running
    events: int = 0
    events_lost: int = 0
    wall: float = 0.0
    problems: list = field(default_factory=list)

    def check(self) -> list[str]:
        """What did not hold (empty: everything held)."""
        out = list(self.problems)
        for name in ("duplicates", "duplicate_creates", "missing", "bad_mappings", "running", "events_lost"):
            if getattr(self, name):
                out.append(f"{name} = {getattr(self, name)}")
        if not self.consistent_attempts:
            out.append("an operation's attempt rows do not match its attempts")
        if self.transient_tries < self.write_faults:
            out.append(f"transient tries recorded {self.transient_tries} < faults on writes {self.write_faults}")
        return out

    def lines(self) -> list[str]:
        req = ", ".join(f"{k} {v}" for k, v in sorted(self.requests.items()))
        flt = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"
        classes = sorted({c for c, _ in self.hits})
        per_class = "; ".join(f"{c}: " + ", ".join(f"{k} {n}" for (c2, k), n in sorted(self.hits.items()) if c2 == c)
                              for c in classes)
        return [f"{self.target}: {self.users} users, converged in {self.rounds} reconcile runs "
                f"({self.failed_rounds} failed), settled after run {self.settled_after}, {self.events} events, "
                f"wall {self.wall:.1f} s",
                f"  requests {sum(self.requests.values())} ({req}); faults {sum(self.faults.values())} ({flt}), "
                f"{self.write_faults} on writes",
                f"  faults per request class: {per_class or 'none'}",
                *(f"  run {i}: {r}" for i, r in enumerate(self.runs, 1)),
                f"  operations {self.operations}, attempt rows {self.attempts}, retries recorded {self.retries}, "
                f"failed tries recorded (transient) {self.transient_tries}",
                f"  duplicates {self.duplicates} (refused as duplicates {self.duplicate_creates}), users missing "
                f"{self.missing}, bad mappings {self.bad_mappings}, "
                f"left running {self.running}, events lost {self.events_lost}"]


def _config_file(tmp: Path, entry: dict, attempts: int, timeout: float, concurrency: int | None = None) -> Path:
    path = tmp / f"chaos-{entry['name']}.yaml"
    # A dropped connection over TLS (the Salesforce sandbox) is noticed only when the read times out.
    entry = {**entry, entry["type"]: {**entry[entry["type"]], "timeout": timeout}}
    path.write_text(json.dumps({"tenant_domain": "example.com",
                                "retry": {"attempts": attempts, "base_delay": 0.05, "max_delay": 1.0, "jitter": 0.5},
                                # 20% random faults are noise, not an unhealthy target: the quarantine
                                # (tests/test_quarantine.py) must not trip on a few failures in a row here.
                                "connectors": [{**entry, "max_deletions": 0, "quarantine_after": 1000,
                                                **({"max_concurrency": concurrency} if concurrency else {})}]}))
    return path


def _add_users(n: int) -> list[str]:
    from models.db import session_scope
    from models.events import EventUser
    from models.identity import upsert_user

    with session_scope() as session:
        return [upsert_user(session, EventUser(username=f"chaos{i}", email=f"chaos{i}@example.com",
                                               given_name=f"G{i}", family_name="Chaos"),
                            "example.com", source="import").id for i in range(n)]


def _reconcile_until_converged(name: str, config_path: Path, chunk: int, max_rounds: int, fig: Figures,
                               census=None) -> None:
    """Run the reconcile flow until a run finds nothing to do; after each, note what it said and `census()`."""
    from flows.reconcile import reconcile

    while fig.rounds < max_rounds:
        fig.rounds += 1
        try:  # the result whatever the run's final state (Failed when an operation failed)
            result = asyncio.run(reconcile(name, config_path=str(config_path), chunk_size=chunk, lock_wait=60))
        except Exception as exc:  # the listing failed on every retry: the next run starts over
            fig.failed_rounds += 1
            result, said = None, f"failed: {type(exc).__name__}: {str(exc)[:160]}"
        else:
            o = result["outcomes"]
            said = (f"{result['status']}: succeeded {o['succeeded']}, failed {o['failed']}, "
                    f"outcome_unknown {o.get('outcome_unknown', 0)}")
        settled = census() if census else None
        fig.runs.append(said + (f"; then {settled[1]}" if settled else ""))
        if settled and settled[0] and not fig.settled_after:
            fig.settled_after = fig.rounds
        if isinstance(result, dict) and not sum(v for k, v in result["counts"].items() if k != "orphan"):
            return
    fig.problems.append(f"not converged after {max_rounds} reconcile runs")


def _events(name: str, config_path: Path, n: int, fig: Figures) -> dict[str, str]:
    """Send n update events (a new given name) through the event flow, then the sweeper; return wanted names."""
    from models.ingest import accept
    from flows.provision import provision_user
    from flows.sweep import sweep_events
    from models.config import load_config

    config = load_config(config_path)
    wanted = {}
    for i in range(n):
        accepted = accept({"id": f"chaos-{name}-{i}", "type": "user.updated", "trigger": "api",
                           "user": {"username": f"chaos{i}", "given_name": f"Changed{i}"}}, config)
        wanted[f"chaos{i}"] = f"Changed{i}"
        try:
            asyncio.run(provision_user(event_id=accepted.event_id, config_path=str(config_path), return_state=True))
        except Exception as exc:  # left unfinished: the sweeper runs it again
            print(f"  {name}: event {accepted.event_id} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    asyncio.run(sweep_events(older_than_seconds=0, config_path=str(config_path)))
    fig.events = n
    return wanted


def _census(cfg_entry: dict, config_path: Path, ids: list[str]) -> tuple[list, int, int, int]:
    """(our accounts, duplicates, users missing, users with an account their mapping does not point at)."""
    from sqlmodel import select

    from connectors.factory import get_connector
    from models.config import load_config
    from models.db import session_scope
    from models.tables import Mapping

    cfg = load_config(config_path).connector(cfg_entry["name"])
    accounts = [a for a in get_connector(cfg).iter_users() if a.external_id in set(ids)]
    per_user = Counter(a.external_id for a in accounts)
    by_ext = {a.external_id: a for a in accounts}
    with session_scope() as session:
        maps = {m.local_id: m.remote_id for m in session.exec(select(Mapping).where(Mapping.connector == cfg.name))}
    return (accounts, sum(n - 1 for n in per_user.values() if n > 1), len(set(ids) - set(per_user)),
            sum(1 for i in ids if maps.get(i) != getattr(by_ext.get(i), "id", None)))


def _inspect(cfg_entry: dict, config_path: Path, ids: list[str], wanted_names: dict, fig: Figures) -> None:
    """With the faults off: count accounts, mappings, attempts and anything left running."""
    from sqlmodel import func, select

    from models.db import session_scope
    from models.tables import Event, Operation, OperationAttempt, ReconciliationRun

    accounts, fig.duplicates, fig.missing, unmapped = _census(cfg_entry, config_path, ids)
    fig.bad_mappings = unmapped
    with session_scope() as session:
        ops = session.exec(select(Operation)).all()
        rows = session.exec(select(OperationAttempt)).all()
        fig.operations, fig.attempts = len(ops), len(rows)
        fig.retries = sum(1 for r in rows if r.number > 1)
        fig.transient_tries = sum(1 for r in rows if r.error_code in TRANSIENT_CODES)
        by_op: dict[int, list] = {}
        for r in rows:
            by_op.setdefault(r.operation_id, []).append(r)
        for op in ops:
            tries = sorted(by_op.get(op.id, []), key=lambda r: r.number)
            if len(tries) != op.attempts or [r.number for r in tries] != list(range(1, op.attempts + 1)) or (
                    tries and tries[-1].status != op.status and op.status != "abandoned"):
                fig.consistent_attempts = False
        fig.running = (sum(1 for o in ops if o.status in ("running", "retrying"))
                       + sum(1 for r in rows if r.status == "running")
                       + session.exec(select(func.count()).select_from(ReconciliationRun)
                                      .where(ReconciliationRun.status == "running")).one())
        events = session.exec(select(Event)).all()
        unfinished = [e.id for e in events if e.status != "succeeded"]
    given = {a.user_name.split("@")[0]: a.given_name for a in accounts}
    not_applied = [u for u, g in wanted_names.items() if given.get(u) != g]
    fig.events_lost = len(unfinished) + len(not_applied)
    if unfinished or not_applied:
        fig.problems.append(f"events not succeeded {unfinished[:5]}, updates not applied {not_applied[:5]}")


def run_target(kind: str, users: int, rate: float = 0.2, kinds: tuple[str, ...] = ("5xx", "429", "drop", "lost"),
               chunk: int = 50, events: int = 0, seed: int = 7, attempts: int = 6, max_rounds: int = 8,
               timeout: float = 5.0, workdir: Path | None = None, lose_first: int = 2,
               max_per_request: int = 2, concurrency: int | None = None) -> Figures:
    """Run the chaos scenario against one target in a fresh SQLite store (a Prefect API must be up).

    `concurrency=1` sends one request at a time (one chunk, one call of a batch), so the requests come
    in the same order every run and, with faults drawn per request, the same ones fail.
    """
    from models.db import dispose_all

    name = {"scim2": "chaos-scim", "google": "chaos-google", "salesforce": "chaos-sf"}[kind]
    fig = Figures(target=kind, users=users)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        previous = os.environ.get("OUTBOUND_DATABASE_URL")
        os.environ["OUTBOUND_DATABASE_URL"] = f"sqlite:///{tmp}/chaos-{kind}.db"
        try:
            plan = RecordingPlan(rate=0.0, kinds=kinds, seed=seed, retry_after=0.05, latency=0.05,
                                 lose_paths=BATCH_PATHS[kind], per_request=True, max_per_request=max_per_request)
            with sandbox_for(kind, plan, name) as (box, entry):
                tap = _Tap(box.faults)
                box.faults = tap
                config_path = _config_file(Path(tmp), entry, attempts, timeout, concurrency)
                ids = _add_users(users)

                def census() -> tuple[bool, str]:  # between runs, with the faults off
                    plan.rate, lose = 0.0, plan.lose_first
                    plan.lose_first = 0
                    try:
                        accounts, dups, missing, unmapped = _census(entry, config_path, ids)
                    finally:
                        plan.rate, plan.lose_first = rate, lose
                    return (not dups and not missing and not unmapped, f"accounts {len(accounts)}, duplicates {dups}, missing "
                            f"{missing}, unmapped {unmapped}")

                start = time.perf_counter()
                plan.rate, plan.lose_first = rate, lose_first
                _reconcile_until_converged(name, config_path, chunk, max_rounds, fig, census)
                wanted = _events(name, config_path, min(events, users), fig) if events else {}
                fig.wall = time.perf_counter() - start
                plan.rate, plan.lose_first = 0.0, 0
                fig.requests = dict(tap.counts)
                fig.faults = dict(Counter({k: v for k, v in plan.injected.items()}))
                fig.hits = dict(plan.hits)
                # A lost answer is settled by reading the target: found applied, it records no failed try.
                fig.write_faults = sum(n for (cls, k), n in plan.hits.items()
                                       if cls == "write" and k not in ("latency", "lost"))
                fig.duplicate_creates = getattr(box, "duplicate_creates", 0)
                _inspect(entry, config_path, ids, wanted, fig)
        finally:
            dispose_all()
            if previous is None:
                os.environ.pop("OUTBOUND_DATABASE_URL", None)
            else:
                os.environ["OUTBOUND_DATABASE_URL"] = previous
    return fig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=0.2)
    parser.add_argument("--kinds", default="5xx,429,drop,lost", help="fault kinds: 5xx,429,drop,lost,latency,timeout")
    parser.add_argument("--chunk", type=int, default=50, help="plan rows per apply chunk (one batch call each)")
    parser.add_argument("--events", type=int, default=10, help="update events per target through the event flow")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--lose-first", type=int, default=2, help="answers lost to the first N batch writes")
    parser.add_argument("--max-runs", type=int, default=8, help="reconcile runs at most")
    parser.add_argument("--lost-bulk", action="store_true",
                        help="the lost-/Bulk scenario: 200 users, 2 /Bulk answers lost, 10%% 503 and 5%% 429 on all")
    parser.add_argument("--repeat", type=int, default=3, help="--lost-bulk: how many times (seed, seed+1, ...)")
    args = parser.parse_args()
    from prefect.testing.utilities import prefect_test_harness

    failed = False
    with prefect_test_harness(server_startup_timeout=120):
        if args.lost_bulk:
            return lost_bulk(args.repeat, args.seed)
        for kind in args.targets.split(","):
            fig = run_target(kind, args.users, args.rate, tuple(args.kinds.split(",")), args.chunk, args.events,
                             args.seed, max_rounds=args.max_runs, lose_first=args.lose_first)
            print("\n".join(fig.lines()), flush=True)
            problems = fig.check()
            print(f"  {'HELD' if not problems else 'DID NOT HOLD: ' + '; '.join(problems)}", flush=True)
            failed |= bool(problems)
    return 1 if failed else 0


def lost_bulk(repeat: int, seed: int, users: int = 200) -> int:
    """200 users reconciled (one chunk, as the CLI does) against a SCIM server without userName uniqueness;
    the answers to the first two /Bulk requests lost; 10 % 503 and 5 % 429 on every request, uncapped."""
    failed = False
    for n in range(repeat):
        fig = run_target("scim2", users, rate=0.15, kinds=("5xx", "5xx", "429"), chunk=500, events=0,
                         seed=seed + n, attempts=5, max_rounds=3, lose_first=2, max_per_request=0)
        print(f"scenario {n + 1} (seed {seed + n}):")
        print("\n".join(fig.lines()), flush=True)
        held = not fig.duplicates and not fig.missing and 0 < fig.settled_after <= 2
        print(f"  {'HELD' if held else 'DID NOT HOLD'}: {fig.users - fig.missing} of {fig.users} users have an "
              f"account, duplicates {fig.duplicates}, settled after run {fig.settled_after}", flush=True)
        failed |= not held
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
