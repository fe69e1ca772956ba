"""N creates then N updates through the SCIM connector's apply_batch, against SCIM server variants.

    .venv/bin/python bench/bulk.py 2000 [workers]

Variants: scim2-server as shipped (bulkId echoed for every answer), one that echoes bulkId only for
POSTs, one capped at 100 operations / 64 KiB, one behind a proxy refusing bodies over 64 KiB
while advertising 1 MiB (413s), and one without /Bulk (single requests, `workers` at a time).
Prints per variant: seconds, HTTP requests, 413 answers, failed operations.
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from connectors.base import Account, BatchOp  # noqa: E402
from connectors.factory import get_connector  # noqa: E402
from models.config import ConnectorConfig  # noqa: E402
from sandbox.scim import ScimSandbox  # noqa: E402

VARIANTS = {
    "scim2-server default (bulk ≤ 1000 ops, 1 MiB)": {},
    "bulkId only for POST": {"bulk_ids": "post"},
    "bulk ≤ 100 ops, ≤ 64 KiB": {"bulk": (True, 100, 65_536)},
    "proxy refuses > 64 KiB (advertises 1 MiB)": {"body_limit": 65_536},
    "no /Bulk": {"bulk": (False, 0, 0)},
}


def run(n: int, workers: int, name: str, variant: dict) -> str:
    with ScimSandbox(**variant) as sandbox:
        os.environ["BENCH_BULK_TOKEN"] = sandbox.token
        connector = get_connector(ConnectorConfig.model_validate({
            "name": f"bench-{len(sandbox.token)}-{id(sandbox)}", "type": "scim2",
            "scim2": {"base_url": sandbox.url, "auth": {"type": "bearer", "token": "env:BENCH_BULK_TOKEN"}}}))
        ops = [BatchOp("create", account=Account(user_name=f"u{i}", external_id=f"x{i}", given_name="G",
                                                 family_name="F", email=f"u{i}@example.com")) for i in range(n)]
        started = time.perf_counter()
        created = connector.apply_batch(ops, max_workers=workers)
        updates = [BatchOp("update", remote_id=a.id, changes={"family_name": "Byron"}) for a in created
                   if not isinstance(a, BaseException)]
        updated = connector.apply_batch(updates, max_workers=workers)
        seconds = time.perf_counter() - started
        failed = sum(isinstance(r, BaseException) for r in [*created, *updated])
        too_large = sum(1 for a in sandbox.answered if a[2] == 413)
        return (f"{name:<46} {seconds:6.1f} s  {len(sandbox.answered):6d} requests  {too_large:3d} × 413  "
                f"{failed} failed of {2 * n}")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    print(f"{n} creates + {n} updates, {workers} workers where single requests are used")
    for name, variant in VARIANTS.items():
        print(run(n, workers, name, variant), flush=True)


if __name__ == "__main__":
    main()
