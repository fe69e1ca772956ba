"""N creates to the SCIM sandbox: through the reconcile flow vs a bare `requests` loop, same concurrency.

    .venv/bin/python bench/apply.py 10000 [concurrency]

Prints both throughputs, their ratio, and Prefect's share of the flow's wall time (the wall time
minus planning and the span in which chunks were being applied, over the wall time).
"""

import asyncio
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import requests  # noqa: E402


def bare_loop(n: int, workers: int) -> float:
    from sandbox.scim import ScimSandbox

    with ScimSandbox() as scim:
        session = requests.Session()
        session.headers.update({"Authorization": f"Bearer {scim.token}", "Content-Type": "application/scim+json"})
        adapter = requests.adapters.HTTPAdapter(pool_connections=workers, pool_maxsize=workers)
        session.mount("http://", adapter)

        def create(i: int) -> int:
            body = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": f"user{i}",
                    "externalId": f"{i:032x}", "name": {"givenName": f"G{i}", "familyName": "Family"},
                    "displayName": f"G{i} Family", "emails": [{"value": f"user{i}@example.com", "primary": True,
                                                                "type": "work"}], "active": True}
            return session.post(f"{scim.url}/Users", data=json.dumps(body)).status_code

        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            codes = list(pool.map(create, range(n)))
        elapsed = time.perf_counter() - start
        assert codes.count(201) == n, {c: codes.count(c) for c in set(codes)}
        return elapsed


def through_flow(n: int, workers: int, tmp: Path) -> tuple[float, float, float]:
    from sandbox.scim import ScimSandbox

    os.environ["OUTBOUND_DATABASE_URL"] = f"sqlite:///{tmp}/bench.db"
    from models.db import session_scope
    from models.tables import User

    with session_scope() as session:
        session.add_all([User(username=f"user{i}", tenant="example.com", source="import", given_name=f"G{i}",
                              family_name="Family", email=f"user{i}@example.com") for i in range(n)])
    import tasks.apply
    import tasks.plan.make  # plan_task's module: where it looks make_plan up
    from flows.reconcile import reconcile_connector

    spans: dict[str, list] = {"plan": [], "apply": []}
    real_plan, real_apply = tasks.plan.make.make_plan, tasks.apply.apply_rows

    def timed(kind, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spans[kind].append((start, time.perf_counter()))
        return wrapper

    tasks.plan.make.make_plan = timed("plan", real_plan)
    tasks.apply.apply_rows = timed("apply", real_apply)
    with ScimSandbox() as scim:
        os.environ["BENCH_SCIM_TOKEN"] = scim.token
        config = tmp / "outbound.yaml"
        config.write_text(f"""tenant_domain: example.com
connectors:
  - name: bench
    type: scim2
    max_concurrency: {workers}
    max_deletions: 0
    scim2: {{base_url: "{scim.url}", auth: {{type: bearer, token: "env:BENCH_SCIM_TOKEN"}}}}
""")
        start = time.perf_counter()
        result = asyncio.run(reconcile_connector(connector="bench", config_path=str(config)))
        wall = time.perf_counter() - start
        assert result["outcomes"]["succeeded"] == n, result
        assert len(scim.users()) == n
    plan_time = sum(b - a for a, b in spans["plan"])
    apply_span = max(b for _, b in spans["apply"]) - min(a for a, _ in spans["apply"])
    return wall, plan_time, apply_span


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    from prefect.testing.utilities import prefect_test_harness

    bare = bare_loop(n, workers)
    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=120):
        wall, plan_time, apply_span = through_flow(n, workers, Path(tmp))
    prefect = max(wall - plan_time - apply_span, 0.0)
    print(f"N={n:,} concurrency={workers}")
    print(f"  bare requests loop: {bare:.2f} s, {n / bare:,.0f} creates/s")
    print(f"  reconcile flow:     {wall:.2f} s, {n / wall:,.0f} creates/s "
          f"(plan {plan_time:.2f} s, applying {apply_span:.2f} s)")
    print(f"  ratio flow/bare: {bare / wall:.0%}; Prefect's share of the flow's wall time: {prefect / wall:.1%}")


if __name__ == "__main__":
    main()
