"""What the CLI says about the deletion guard: a reconcile it stopped, a dry run's verdict, and in
`outbound status` the last decision and the deletions it holds back.

The decisions themselves (the approval form, the plan's hash, what a held decision is) are
tasks.guard's; the flow pauses for an approval in the Prefect UI, so the CLI never asks: a run
without --yes stops, and these lines say how to review the plan and apply it. tasks.guard is
imported where it is used: it brings Prefect, which a command's start does without.
"""

from typing import Optional

from deployments.cli.console import when
from models.kinds import RunStatus

# A real run the guard stopped (older rows recorded a CLI stop as awaiting-approval).
STOPPED_STATUSES = (RunStatus.STOPPED_BY_GUARD, RunStatus.AWAITING_APPROVAL)


def dry_run_verdict(result: dict) -> str:
    """What the real run of a dry run's plan would do at the deletion guard."""
    from tasks.guard import dry_run_verdict as verdict

    return verdict(bool(result.get("guard_tripped")), result["deletions"], result["threshold"])


def stopped_line(result: dict) -> str:
    """A reconcile the guard stopped: nothing applied, how to review the plan and apply it."""
    from tasks.guard import stopped_words

    return f"{result['connector']}: {stopped_words(result['connector'], result['message'])}"


def status_name(status: Optional[str]) -> Optional[str]:
    # Older rows: a CLI guard stop was recorded as awaiting-approval, though nothing waits for one.
    return RunStatus.STOPPED_BY_GUARD if status == RunStatus.AWAITING_APPROVAL else status


def decision_of(run: dict) -> Optional[dict]:
    """The deletion guard's decision on the run (approved, rejected, stopped, forced), if the plan tripped it."""
    if not run.get("decision"):
        return None
    return {"decision": run["decision"], "by": run.get("decided_by"), "comment": run.get("decision_comment"),
            "at": when(run.get("decided_at")), "plan_hash": run.get("plan_hash")}


def held_line(connector: str, held: dict) -> str:
    """The deletions the guard holds back since the last real run, and what settles them."""
    from tasks.guard import STOPPED, decision_words, held_words, rerun_advice

    if held["decision"] == STOPPED:
        return (f"{connector}: held: {held_words(held)}: the last real reconciliation ({held['at']} UTC) stopped at "
                f"the deletion guard, nothing applied: {held.get('message') or 'too many deletions'}. Nothing is "
                f"waiting; {rerun_advice(connector)}.")
    review = f"review with `outbound reconcile --connector {connector} --dry-run --report plan.csv`"
    return (f"{connector}: held: {held_words(held)}: deletion guard {decision_words(held)} at {held['at']} UTC, "
            f"nothing applied (plan sha256 {str(held.get('plan_hash') or '')[:12]}). Held until a real run: "
            f"{review}, then `outbound reconcile --connector {connector}` (approve it, or --yes).")


def guard_line(connector: str, run: dict) -> Optional[str]:
    """One sentence on the last run's guard decision (a held one is held_line's)."""
    guard = run.get("guard")
    if not guard or run.get("status") in (RunStatus.STOPPED_BY_GUARD, RunStatus.REJECTED):
        return None
    who = f" by {guard['by']}" if guard.get("by") else ""
    why = f": {guard['comment']}" if guard.get("comment") else ""
    return (f"{connector}: guard {guard['decision']}{who} at {guard['at']} UTC{why} "
            f"(plan sha256 {str(guard.get('plan_hash') or '')[:12]})")
