"""Recording a reconciliation's chunks: operations, their attempts and the mappings, rows per second.

    .venv/bin/python bench/record_ops.py [--rows 10000] [--chunk 500] [--threads 1 4] [--store sqlite postgres]

Each chunk is written as `tasks/apply.py: apply_rows` writes one after its POST /Bulk: in one
transaction, the mappings of its creates (`link_accounts`), its operation rows with their ids
(`record_operations(ids=True)`) and one attempt per row (`record_attempts`). The rows are the bulk
path's: every user created, one try each. `--threads 4` writes four chunks at once, as a reconcile
keeps four in flight. Prints rows/s (wall clock) and the process's CPU per row, per store.

To measure another checkout's store code, put it first: `PYTHONPATH=../other-checkout .venv/bin/python
bench/record_ops.py` (this checkout is only the fallback on the path).
"""

import argparse
import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent))  # after PYTHONPATH, so it can name another checkout

ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def chunk_rows(connector: str, run_id: str, first: int, size: int) -> tuple[list[dict], list[dict], list[list]]:
    """(mappings, operation rows, tries) of a chunk of `size` created users, as apply_rows builds them."""
    from models.kinds import Action, Intent, OperationStatus
    from models.runstate import operation_row, pushed_hash
    from models.tables import utcnow

    now = utcnow()
    maps, ops, tries = [], [], []
    for i in range(first, first + size):
        local_id, remote_id, name = uuid.uuid4().hex, str(uuid.uuid4()), f"user{i:06d}"
        maps.append({"local_id": local_id, "remote_id": remote_id, "remote_name": name,
                     "pushed_hash": pushed_hash({"user_name": name, "active": True})})
        ops.append(operation_row(connector, local_id, f"{name}@PRIMARY", Intent.PROVISION,
                                 event_id=f"reconcile:{run_id}", operation=Action.CREATE,
                                 status=OperationStatus.SUCCEEDED, attempts=1, reason="not in the target: create",
                                 remote_id=remote_id, remote_name=name, flow_run_id=run_id,
                                 started_at=now - timedelta(seconds=1), finished_at=now))
        tries.append([(now - timedelta(seconds=1), now, None)])
    return maps, ops, tries


def record_chunk(connector: str, maps: list[dict], ops: list[dict], tries: list[list]) -> None:
    """One chunk's writes, in one transaction, in apply_rows' order."""
    from models.db import session_scope
    from models.kinds import OperationStatus
    from models.runstate import link_accounts, record_attempts, record_operations

    with session_scope() as session:
        link_accounts(session, connector, maps)
        ids = record_operations(session, ops, ids=True)
        record_attempts(session, [
            {"operation_id": op_id, "number": 1, "status": OperationStatus.SUCCEEDED, "error_code": None,
             "error_message": None, "flow_run_id": op["flow_run_id"], "started_at": started, "finished_at": finished}
            for op_id, op, [(started, finished, _)] in zip(ids, ops, tries)])


def run(rows: int, chunk: int, threads: int) -> tuple[float, float]:
    """(rows/s, CPU ms per row) of recording `rows` rows in chunks of `chunk`, `threads` chunks at once."""
    from models.db import get_engine

    get_engine()  # migrated before the clock
    run_id = uuid.uuid4().hex
    work = [chunk_rows("bench", run_id, first, min(chunk, rows - first)) for first in range(0, rows, chunk)]
    wall, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda w: record_chunk("bench", *w), work))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return rows / wall, cpu * 1000 / rows


def check(rows: int) -> None:
    """Every row was written: as many operations, attempts and mappings as rows, each attempt on its operation."""
    from sqlalchemy import text

    from models.db import get_engine

    with get_engine().connect() as conn:
        counts = conn.execute(text(
            "SELECT (SELECT count(*) FROM operations), (SELECT count(*) FROM operation_attempts),"
            " (SELECT count(*) FROM mappings), (SELECT count(*) FROM operation_attempts a JOIN operations o"
            " ON o.id = a.operation_id AND o.started_at = a.started_at)")).one()
    if tuple(counts) != (rows,) * 4:
        raise SystemExit(f"rows written (operations, attempts, mappings, attempts on their operation): {counts}")


def store(kind: str):
    """A fresh, empty state store of `kind` as OUTBOUND_DATABASE_URL; returns what removes it."""
    if kind == "sqlite":
        directory = tempfile.TemporaryDirectory(prefix="outbound-record-ops-")
        os.environ["OUTBOUND_DATABASE_URL"] = f"sqlite:///{directory.name}/outbound.db"
        return directory.cleanup
    import psycopg

    name = f"outbound_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    os.environ["OUTBOUND_DATABASE_URL"] = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"

    def drop():
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return drop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--store", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    args = parser.parse_args()
    import models

    print(f"store code: {Path(models.__file__).resolve().parent.parent}; load average {os.getloadavg()[0]:.2f}")
    for kind in args.store:
        for threads in args.threads:
            remove = store(kind)
            try:
                rate, cpu = run(args.rows, args.chunk, threads)
                check(args.rows)
            finally:
                from models.db import dispose_all

                dispose_all()
                remove()
            print(f"{kind:8} {args.rows} rows in chunks of {args.chunk}, {threads} at once: "
                  f"{rate:7.0f} rows/s, {cpu:.3f} ms CPU per row")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
