"""The deletion guard's decisions: the approval form, the plan's hash, and the audit record.

A plan that deletes or disables more than a connector's max_deletions is not applied unreviewed.
Whoever decides (an operator in the Prefect UI, or the CLI's --yes) is recorded on the
reconciliation run with the decision, the comment, the time and the hash of the plan rows decided
on, so an audit can tell which plan was approved even after the target has changed.
"""

import getpass
import hashlib
import json
from enum import Enum
from typing import Optional

from prefect.input import RunInput
from pydantic import Field

from models.db import session_scope
from models.tables import ReconciliationRun, utcnow

APPROVED, REJECTED, STOPPED, FORCED = "approved", "rejected", "stopped", "forced"


class Decision(str, Enum):
    approve = "approve"
    reject = "reject"


class Approval(RunInput):
    """The operator's answer to a plan that deletes or disables more than max_deletions allows.

    `decision` has no default: the form starts with nothing chosen, so a Submit without a choice is
    refused rather than read as a rejection (or an approval).
    """

    decision: Decision = Field(description="approve: apply this plan now; reject: end the run, nothing applied")
    approver: str = Field(min_length=1, max_length=255, description="Your name: recorded with the decision")
    # A plain string (empty by default) renders as one text box; Optional[str] made the form ask for a type.
    comment: str = Field(default="", max_length=2000, description="Why (recorded; shown in the log)")


def _records(frame) -> list[str]:
    frame = frame.astype(object).where(frame.notna(), None)
    return sorted(json.dumps(r, sort_keys=True, default=str) for r in frame.to_dict(orient="records"))


def plan_hash(plan) -> str:
    """sha256 of the plan's rows (user and group rows), independent of their order."""
    payload = json.dumps({"connector": plan.connector, "rows": _records(plan.rows),
                          "group_rows": _records(plan.group_rows)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def cli_user() -> str:
    """Who runs the CLI, as the operating system knows them ("unknown" when it does not)."""
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"


def record_decision(run_id: str, decision: str, by: Optional[str], comment: Optional[str], digest: str) -> None:
    with session_scope() as session:
        run = session.get(ReconciliationRun, run_id)
        run.decision, run.decided_by, run.decision_comment = decision, (by or None), (comment or None)
        run.decided_at, run.plan_hash = utcnow(), digest
        session.add(run)


def approval_description(connector: str, counts: dict, deletions: int, threshold: int, digest: str,
                         drift_link: Optional[str]) -> str:
    """The markdown the Resume form shows: what approving applies, and where to review it."""
    lines = [f"**The plan for {connector} deletes or disables {deletions} accounts; max_deletions allows "
             f"{threshold}.**", "", "Approving applies this plan:", "", "| action | count |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in counts.items() if v]
    lines += ["", f"Plan sha256 `{digest[:16]}`."]
    if drift_link:
        lines += ["", f"Review the rows first: [drift table]({drift_link})."]
    lines += ["", "Choose *approve* or *reject* and give your name; nothing is chosen for you."]
    return "\n".join(lines)
