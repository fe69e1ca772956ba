"""The deletion guard's decisions: the approval form, the plan's hash, and the audit record.

A plan that deletes or disables more than a connector's max_deletions is not applied unreviewed.
Whoever decides (an operator in the Prefect UI, or the CLI's --yes) is recorded on the
reconciliation run with the decision, the comment, the time and the hash of the plan rows decided
on, so an audit can tell which plan was approved even after the target has changed.
"""

import getpass
import hashlib
import json
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Optional

from prefect.input import RunInput
from pydantic import Field

from models.kinds import Action, RunStatus
from models.runstate import last_reconciliations, record_decision

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


def dry_run_verdict(tripped: bool, deletions: int, threshold: int) -> str:
    """What the real run would do at the deletion guard, in one sentence (a dry run's summary, log, state, CLI)."""
    if tripped:
        return (f"the real run would stop at the deletion guard: {deletions} deletions > max {threshold} "
                f"(max_deletions); it needs an approval, or --yes")
    return f"the real run would pass the deletion guard: {deletions} deletions, max {threshold} (max_deletions)"


def cli_user() -> str:
    """Who runs the CLI, as the operating system knows them ("unknown" when it does not)."""
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"


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


# A real run that ended so holds its deletions back: nothing was applied, and only a later real run
# (approved, forced, or planning no more than max_deletions) settles them. Dry runs settle nothing.
HOLDING = (RunStatus.REJECTED, RunStatus.STOPPED_BY_GUARD, RunStatus.AWAITING_APPROVAL)
HELD_ACTIONS = (Action.DISABLE, Action.DELETE, Action.ORPHAN)


def _stamp(value: Any) -> Optional[str]:
    """`YYYY-MM-DD HH:MM:SS` (UTC) of a stored time, whatever type the store returned it as."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return (value.astimezone(timezone.utc) if value.tzinfo else value).strftime("%Y-%m-%d %H:%M:%S")
    return str(value)[:19].replace("T", " ")


def json_dict(value: Any) -> dict:
    """A run-state column that holds a dict, or its JSON text; {} for anything else."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def held_decisions(session) -> dict[str, dict]:
    """Per connector whose last real reconciliation was rejected or stopped at the deletion guard:
    what it held back (`held`: plan action -> count), the decision (who, why, when) and the run."""
    out = {}
    for connector, run in last_reconciliations(session, real=True).items():
        status = RunStatus.STOPPED_BY_GUARD if run.get("status") == RunStatus.AWAITING_APPROVAL else run.get("status")
        if status not in HOLDING:
            continue
        counts = json_dict(run.get("counts"))
        out[connector] = {
            "status": status, "decision": run.get("decision") or (REJECTED if status == RunStatus.REJECTED else STOPPED),
            "by": run.get("decided_by"), "comment": run.get("decision_comment"),
            "at": _stamp(run.get("decided_at") or run.get("finished_at") or run.get("started_at")),
            "run_id": run.get("id"), "flow_run_id": run.get("flow_run_id"), "message": run.get("error"),
            "held": {str(a): int(counts[a]) for a in HELD_ACTIONS if counts.get(a)},
            "plan_hash": run.get("plan_hash")}
    return out


def held_words(held: dict) -> str:
    """`disable 3, delete 1` (what the decision holds back), or `the plan's deletions` when uncounted."""
    return ", ".join(f"{a} {n}" for a, n in held["held"].items()) or "the plan's deletions"


def decision_words(held: dict) -> str:
    """`rejected by Dana: not now` / `stopped (a CLI run without --yes)`: the guard's decision in words."""
    if held["decision"] == STOPPED:
        return "stopped (a run without --yes)"
    who = f" by {held['by']}" if held.get("by") else ""
    return f"{held['decision']}{who}" + (f": {held['comment']}" if held.get("comment") else "")
