"""`make demo`: provision sample users into the sandbox targets through the Prefect flow.

Loads the users of `sandbox/users.json` as identity events, drains them through the provisioning
flow (in batches, in this process, on Prefect's temporary API), then updates some, disables one and
deletes one, sends a few WSO2-shaped webhooks through the real endpoint, and prints a summary read
from the state store.
"""

import json
import os
import tempfile
import time
from collections import Counter
from importlib.resources import files
from pathlib import Path

USERS_FILE = files("sandbox") / "users.json"


def sample_events(count: int) -> tuple[list[dict], list[dict]]:
    users = json.loads(USERS_FILE.read_text())[:count]
    created = [{"id": f"demo-create-{u['username']}", "type": "user.created", "trigger": u["trigger"],
                "user": {k: v for k, v in u.items() if k != "trigger"}} for u in users]
    later = []
    for u in users[:5]:
        later.append({"id": f"demo-update-{u['username']}", "type": "user.updated", "trigger": "console",
                      "user": {"username": u["username"], "family_name": u["family_name"] + "-Jones",
                               "display_name": f"{u['given_name']} {u['family_name']}-Jones"}})
    if len(users) > 7:
        later.append({"id": f"demo-disable-{users[6]['username']}", "type": "user.disabled", "trigger": "console",
                      "user": {"username": users[6]["username"]}})
        later.append({"id": f"demo-delete-{users[7]['username']}", "type": "user.deleted", "trigger": "console",
                      "user": {"username": users[7]["username"]}})
    return created, later


def _drain(config_path: str) -> tuple[int, float]:
    """Provision every pending event the way the event API does: drains, in batches."""
    import asyncio

    from flows.provision import provision_user

    start = time.perf_counter()
    state = asyncio.run(provision_user(config_path=config_path, return_state=True))
    ran = state.result() if state.is_completed() else 0  # a Failed run: the summary shows what failed
    return ran, time.perf_counter() - start


def summary(database: str) -> list[dict]:
    from models.db import session_scope
    from models.kinds import NOT_DONE, Action
    from models.runstate import operations_but_verifications

    counts: dict[str, Counter] = {}
    seen = set()
    with session_scope(database) as session:
        for op in operations_but_verifications(session):
            # A batch that coalesced several events of one user records its one write under each event.
            write = (op.connector, op.entity_type, op.entity_id, op.operation, op.started_at)
            if write in seen:
                continue
            seen.add(write)
            c = counts.setdefault(op.connector, Counter())
            if op.status in NOT_DONE:
                c["failed"] += 1
            elif op.operation in (Action.CREATE, Action.RELINK):
                c["created"] += 1
            elif op.operation in (Action.UPDATE, Action.LINK, Action.DISABLE):
                c["updated"] += 1
            elif op.operation in (Action.DELETE, Action.GONE):
                c["deleted"] += 1
    return [{"connector": name, **{k: c[k] for k in ("created", "updated", "deleted", "failed")}}
            for name, c in sorted(counts.items())]


def run_demo(count: int, database: str) -> int:
    from rich.console import Console
    from rich.table import Table

    from deployments import demo_wso2
    from models.ingest import accept
    from models.config import load_config
    from models.db import redacted
    from sandbox.servers import started

    console = Console()
    if database.startswith("sqlite:///"):
        path = Path(database.removeprefix("sqlite:///"))
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)  # each demo starts from an empty store
    os.environ["OUTBOUND_DATABASE_URL"] = database
    started_at = time.perf_counter()
    with started() as boxes, tempfile.TemporaryDirectory() as tmp:
        for line in boxes.describe():
            console.print(f"sandbox: {line.split('(')[0].strip()}")
        boxes.export_secrets()
        config_path = Path(tmp, "outbound.yaml")
        config_path.write_text(boxes.config_yaml() + demo_wso2.config_section())
        config = load_config(config_path)

        created, later = sample_events(count)
        for phase, events in (("create", created), ("update, disable and delete", later)):
            ids = [accept(e, config).event_id for e in events]
            console.print(f"[bold]{phase}[/]: {len(ids)} events accepted, provisioning through Prefect…")
            ran, seconds = _drain(str(config_path))
            console.print(f"  {ran} events provisioned in one flow run (batches of up to 1,000) in {seconds:.1f} s")

        console.print("[bold]WSO2 webhooks[/] through POST /v1/webhooks/wso2:")
        for line in demo_wso2.send(config, str(config_path)):
            console.print(f"  {line}")
        ran, seconds = _drain(str(config_path))
        console.print(f"  {ran} events provisioned in {seconds:.1f} s")

        rows = summary(database)
        table = Table("connector", "created", "updated", "deleted", "failed", title="Demo summary")
        for r in rows:
            table.add_row(r["connector"], *(str(r[k]) for k in ("created", "updated", "deleted", "failed")))
        console.print(table)
        scim_users = boxes.scim.users()
        console.print(f"accounts now in the sandboxes: SCIM {len(scim_users)} "
                      f"({sum(1 for u in scim_users if u.get('active') is False)} disabled), "
                      f"Google {len(boxes.google.users())}, "
                      f"Salesforce {sum(1 for u in boxes.salesforce.users.values() if u.get('UserType', 'Standard') == 'Standard' and u['Username'] != boxes.salesforce.username)}")
    console.print(f"run state: {redacted(database)}  (try: OUTBOUND_DATABASE_URL={database} outbound runs)")
    console.print(f"wall time: {time.perf_counter() - started_at:.1f} s")
    return 1 if any(r["failed"] for r in rows) else 0
