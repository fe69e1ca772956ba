"""Outcome lines: what became of each user, one line each, in the Prefect run's log.

Lines written to a plain Python logger stay in the worker's output; only the run logger's reach
the run's Logs tab in the Prefect UI. A run of a million users logs the first LOGGED_OUTCOMES
lines and a count of the rest (the rest are in the run's artifacts and `outbound runs`).
"""

import logging
import re
from typing import Optional

from models.kinds import OperationStatus


def artifact_key(connector: str, kind: str, dry_run: bool = False) -> str:
    """The key of a run's `kind` artifact on `connector`, for event runs and reconciliations alike:
    `outbound-<connector>-<kind>`, or `outbound-<connector>-dry-run-<kind>` (Prefect keys: lowercase
    letters, digits and dashes)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", connector.lower()).strip("-") or "connector"
    return f"outbound-{slug}-{'dry-run-' if dry_run else ''}{kind}"

LOGGED_OUTCOMES = 50


def run_logger(fallback: logging.Logger):
    """The current Prefect run's logger (its lines reach the UI); `fallback` outside a run."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return fallback


def outcome_line(user: Optional[str], connector: str, operation: str, status: str, remote_id: Optional[str] = None,
                 error: Optional[str] = None, reason: Optional[str] = None) -> str:
    """`user=alice@PRIMARY connector=app create succeeded remote_id=…`, `… failed error=…`, or
    `… none skipped reason=needs one of the roles sales` (a skip says why: the policy's reason)."""
    why = f" reason={reason}" if reason and status == OperationStatus.SKIPPED else ""
    return (f"user={user} connector={connector} {operation} {status}"
            + (f" remote_id={remote_id}" if remote_id else "") + (f" error={error}" if error else "") + why)


def log_outcomes(lines: list[tuple[str, bool]], total: int, fallback: logging.Logger, rest: str = "") -> None:
    """Log the first LOGGED_OUTCOMES (line, failed) pairs, failures as warnings, then `… and N more`.

    `total`: how many lines there were in all (`lines` may hold only the first ones); `rest`: where
    the others can be read.
    """
    logger = run_logger(fallback)
    for line, failed in lines[:LOGGED_OUTCOMES]:
        (logger.warning if failed else logger.info)(line)
    if total > LOGGED_OUTCOMES:
        logger.info("… and %d more%s", total - LOGGED_OUTCOMES, f": {rest}" if rest else "")


def keep_first(lines: list[tuple[str, bool]], more: list[tuple[str, bool]]) -> None:
    """Add `more` to `lines`, keeping no more than would be logged."""
    lines.extend(more[:max(0, LOGGED_OUTCOMES - len(lines))])
