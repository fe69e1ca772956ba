"""Creates through a network that loses every batch answer: accounts and duplicates per connector.

Each target's batch endpoint (SCIM /Bulk, Google batch, Salesforce sObject Collections) applies
the request and then the connection drops before the answer, every time, resends included. The
SCIM server keys accounts on id alone (nothing refuses a second userName); Google and Salesforce
refuse a taken address or username, so there a duplicate is a create the sandbox refused.
`--blind` resends without looking at the target first, to show what the look prevents.

    PYTHONPATH=. .venv/bin/python bench/lost_answers.py --users 200 [--blind]
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "tests")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--blind", action="store_true", help="resend without looking first")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="lost-answers-")
    os.environ["OUTBOUND_DATABASE_URL"] = f"sqlite:///{workdir}/state.db"

    import targets
    import tasks.apply as apply
    from connectors.base import Account
    from connectors.factory import get_connector
    from models.config import RetryPolicy
    from sandbox.faults import FaultPlan
    from sandbox.google import GoogleSandbox
    from sandbox.salesforce import SalesforceSandbox
    from sandbox.scim import ScimSandbox

    if args.blind:
        apply.unless_applied = lambda connector, ops, results, again: again
    policy = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, jitter=0.1)

    def lost(path: str) -> FaultPlan:
        return FaultPlan(rate=1.0, kinds=("lost",), only_methods=("POST", "PATCH"), only_paths=(path,), seed=7)

    kinds = {"scim2": (lambda: ScimSandbox(unique_user_names=False, faults=lost("/Bulk")), targets.scim2_config),
             "google": (lambda: GoogleSandbox(faults=lost("/batch")), targets.google_config),
             "salesforce": (lambda: SalesforceSandbox(query_batch_size=2000, faults=lost("/composite/sobjects")),
                            targets.salesforce_config)}
    print(f"{'target':<11} {'mode':<6} {'succeeded':>9} {'failed':>6} {'unknown':>7} {'accounts':>8} "
          f"{'duplicates':>10} {'lost answers':>12}")
    for kind, (start, config_of) in kinds.items():
        with start() as sandbox:
            cfg = config_of(sandbox)
            connector = get_connector(cfg)
            accounts = {f"local-{i:05d}": Account(
                user_name=f"lost{i:05d}" if kind == "scim2" else f"lost{i:05d}@example.com",
                external_id=f"local-{i:05d}", given_name="Lost", family_name=f"Answer{i}",
                email=f"lost{i:05d}@example.com") for i in range(args.users)}
            rows = [{"op": "create", "action": "create", "local_id": k, "remote_id": None, "changes": None,
                     "entity_name": a.user_name, "user_name": a.user_name, "reason": "-", "decision": None}
                    for k, a in accounts.items()]
            counts = apply.apply_rows(rows, accounts, cfg, connector, run_id="bench", policy=policy)
            ours = [a for a in connector.iter_users() if (a.external_id or "").startswith("local-")]
            dups = len(ours) - args.users if kind == "scim2" else sandbox.duplicate_creates
            print(f"{kind:<11} {'blind' if args.blind else 'look':<6} {counts.succeeded:>9} {counts.failed:>6} "
                  f"{counts.outcome_unknown:>7} {len(ours):>8} {dups:>10} {sandbox.faults.plan.injected.get('lost', 0):>12}")


if __name__ == "__main__":
    main()
