"""The deletion guard's decisions: the approval dialogue, the plan's hash, and the audit record.

A plan that deletes or disables more than a connector's max_deletions is not applied unreviewed.
`settle` is the one place that decides what happens then: forced (the CLI's --yes), paused for an
operator's Approval in the Prefect UI (a deployment run), or stopped (a CLI run without --yes).
Whoever decides is recorded on the reconciliation run with the decision, the comment, the time and
the hash of the plan rows decided on, so an audit can tell which plan was approved even after the
target has changed. What to do after a stop is worded once (`stopped_words`), for the flow's log,
its final state and the CLI alike.
"""

import getpass
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Optional

from prefect import get_run_logger
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from models.kinds import Action, RunStatus
from models.runstate import finish_run, last_reconciliations, record_decision

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


def rerun_advice(connector: str) -> str:
    """How to go on after a guard stop: review the plan, then run it again with --yes."""
    return (f"review the plan (outbound reconcile --connector {connector} --dry-run --report plan.csv), then "
            f"re-run with --yes to apply it")


def stopped_words(connector: str, message: str) -> str:
    """A run the guard stopped, in one sentence: why, that nothing was applied, and what to do next."""
    return f"stopped by the deletion guard: {message}; nothing applied; {rerun_advice(connector)}"


# The run's name suffix after each decision (`reconcile app (approved)`).
LABELS = {APPROVED: "approved", FORCED: "forced with --yes", REJECTED: "rejected", STOPPED: "stopped by guard"}
# How long a paused run waits for its Approval before it fails (nothing applied), and how often it looks.
APPROVAL_TIMEOUT, APPROVAL_POLL = 24 * 3600, 5


@dataclass(frozen=True)
class Settled:
    """The guard's decision on a plan that tripped it: the decision as stored, and the guard's sentence."""

    decision: dict  # decision, by, comment, plan_hash: the row record_decision stored
    message: str  # "the plan would delete or disable N accounts on X, more than max_deletions M"

    @property
    def stops(self) -> bool:
        """Nothing is applied: rejected in the UI, or stopped for want of --yes."""
        return self.decision["decision"] in (REJECTED, STOPPED)

    @property
    def status(self) -> RunStatus:
        """The run's status when it stops here."""
        return RunStatus.REJECTED if self.decision["decision"] == REJECTED else RunStatus.STOPPED_BY_GUARD

    @property
    def label(self) -> str:
        """The run's name suffix for the decision."""
        return LABELS[self.decision["decision"]]


async def settle(plan, run_id: str, digest: str, forced: bool, can_pause: bool,
                 drift_link: Optional[str] = None) -> Optional[Settled]:
    """Decide a real run's plan at the deletion guard and record the decision; None when it passes.

    Forced (--yes) applies it, naming who forced it; a run that can pause (a deployment run) waits
    for an operator's Approval; any other run (the CLI without --yes) stops, nothing applied.
    """
    if not plan.guard_tripped:
        return None
    logger = get_run_logger()
    message = (f"the plan would delete or disable {plan.deletions} accounts on {plan.connector}, more than "
               f"max_deletions {plan.threshold}")
    if forced:
        decision = {"decision": FORCED, "by": f"{cli_user()} (--yes)", "comment": message}
        logger.warning("connector=%s %s: applied without review because --yes was given (by %s)",
                       plan.connector, message, decision["by"])
    elif can_pause:
        decision = await _ask_approval(plan, run_id, message, digest, drift_link)
    else:
        decision = {"decision": STOPPED, "by": None, "comment": message}
        logger.warning("connector=%s %s", plan.connector, stopped_words(plan.connector, message))
    decision["plan_hash"] = digest
    record_decision(run_id, decision["decision"], decision["by"], decision["comment"], digest)
    return Settled(decision, message)


async def _ask_approval(plan, run_id: str, message: str, digest: str, drift_link: Optional[str]) -> dict:
    """Pause this deployment run for an operator's Approval; return the decision (who, what, why)."""
    logger = get_run_logger()
    logger.warning("connector=%s %s: pausing for approval (plan sha256 %s)", plan.connector, message, digest[:16])
    form = Approval.with_initial_data(description=approval_description(
        plan.connector, plan.counts(), plan.deletions, plan.threshold, digest, drift_link))
    try:
        answer = await pause_flow_run(wait_for_input=form, timeout=APPROVAL_TIMEOUT, poll_interval=APPROVAL_POLL)
    except Exception as exc:  # no answer within the timeout: the run fails, the row must not stay `running`
        finish_run(run_id, RunStatus.FAILED, plan.counts(), {}, f"no decision: {type(exc).__name__}: {exc}")
        raise
    if answer.decision == Decision.approve:
        logger.info("connector=%s approved by %s: %s (plan sha256 %s)", plan.connector, answer.approver,
                    answer.comment or "no comment", digest[:16])
        return {"decision": APPROVED, "by": answer.approver, "comment": answer.comment}
    logger.warning("connector=%s rejected by %s: %s (plan sha256 %s): nothing applied", plan.connector,
                   answer.approver, answer.comment or "no comment", digest[:16])
    return {"decision": REJECTED, "by": answer.approver, "comment": answer.comment}


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
