"""The one retry runner: exponential back-off with jitter, transient errors only, Retry-After honoured.

Every retry of a call to a target runs here, inside the task that makes the call, and so does every
wait: Prefect's retry predicate must answer at once, so it never waits and never retries a target's
error (the runner has spent the policy's tries by the time one reaches it). Each try is recorded,
for the OperationAttempt rows of the batch path.
"""

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from connectors.errors import TransientError
from connectors.outcome import known_not_applied, settle
from models.config import RetryPolicy
from models.errors import spurious_interpreter_error
from models.locks import LockTimeout
from models.tables import utcnow

log = logging.getLogger("outbound.retry")

Sleep = Callable[[float], None]
# (items, results, indexes about to be resent) -> the indexes known not applied, to send again; fills in
# `results` for the others: the result of one found applied, an OutcomeUnknown for one that could not be read
Look = Callable[[list, list, list[int]], list[int]]


def delays(policy: RetryPolicy) -> list[float]:
    return [policy.delay(i + 1) for i in range(max(policy.attempts - 1, 1))]


def backoff(policy: RetryPolicy, tries: int, errors: Sequence[BaseException]) -> float:
    """The wait after `tries` tries: the back-off with jitter, or longer when an error's Retry-After asks (up to max_delay)."""
    planned = delays(policy)
    delay = planned[min(max(tries, 1), len(planned)) - 1] * (1 - policy.jitter * random.random())
    asked = [min(getattr(e, "retry_after", None) or 0, policy.max_delay) for e in errors]
    return max([delay, *asked])


@dataclass
class Tries:
    """What each try of one item met: (started, finished, error or None), in order."""

    history: list[list[tuple]] = field(default_factory=list)

    def count(self, i: int) -> int:
        return len(self.history[i])


def _error(result: Any) -> Optional[BaseException]:
    return result if isinstance(result, BaseException) else None


def run_batch(send: Callable[[list], list[Any]], items: list, policy: RetryPolicy, *, look: Optional[Look] = None,
              retry_on: tuple[type[BaseException], ...] = (TransientError,), sleep: Sleep = time.sleep,
              label: str = "", logger: Optional[logging.Logger] = None) -> tuple[list[Any], Tries]:
    """Send `items`; re-send only those that failed with a `retry_on` error, by the policy. Return results and every try.

    `send(items)` returns one result per item, an exception standing for that item's failure.
    Before each resend `look` reads the target: a write whose answer was lost may have applied, and
    only the writes it shows absent (or that were refused before any work) are sent again. One it
    cannot read is read again after the next back-off, the same schedule as a resend; after the last
    send the answers still lost get one more back-off and read. What no read could settle stays an
    OutcomeUnknown.
    """
    logger = logger or log
    started = utcnow()
    results = list(send(list(items)))
    finished = utcnow()
    tries = Tries([[(started, finished, _error(r))] for r in results])
    for round_ in range(1, policy.attempts + (look is not None)):
        again = [i for i, r in enumerate(results) if isinstance(r, retry_on)]
        last = round_ == policy.attempts  # the tries are spent: read what is unknown, send nothing
        if last:
            again = [i for i in again if not known_not_applied(results[i])]
        if not again:
            break
        wait = backoff(policy, round_, [results[i] for i in again])
        logger.info("%s%s=%d attempt=%d wait=%.2fs first_error=%s", f"{label} " if label else "",
                    "reading" if last else "retrying", len(again), tries.count(again[0]) + 1, wait, results[again[0]])
        sleep(wait)
        started = utcnow()
        if look is not None:
            again = look(items, results, again)
            if last or not again:
                continue
        answers = send([items[i] for i in again])
        finished = utcnow()
        for i, result in zip(again, answers):
            results[i] = result
            tries.history[i].append((started, finished, _error(result)))
    return results, tries


def run(call: Callable[[], Any], policy: RetryPolicy, *, look: Optional[Callable[[], Any]] = None,
        retry_on: tuple[type[BaseException], ...] = (TransientError,), sleep: Sleep = time.sleep,
        label: str = "", logger: Optional[logging.Logger] = None) -> tuple[Any, int]:
    """Run `call`, again after each `retry_on` failure by the policy; return (result, tries), or raise the last error.

    Before each resend `look` (if given) reads the target: a result other than None means the lost
    try applied and stands for the call's own; None, that it did not (send again). When the target
    cannot be read the call is not sent again (see run_batch): it raises OutcomeUnknown once the
    tries are spent. Errors of other kinds are raised at once.
    """
    def send(_: list) -> list[Any]:
        try:
            return [call()]
        except retry_on as exc:
            return [exc]

    def read() -> tuple[bool, Any]:
        found = look()
        return found is not None, found

    def looked(_: list, results: list[Any], again: list[int]) -> list[int]:
        return again if settle(results, 0, read) else []

    [result], tries = run_batch(send, [None], policy, look=looked if look is not None else None, retry_on=retry_on,
                                sleep=sleep, label=label, logger=logger)
    if isinstance(result, BaseException):
        raise result
    return result, tries.count(0)


def run_task(call: Callable[[], Any], policy: RetryPolicy, label: str, *, sleep: Sleep = time.sleep) -> Any:
    """Run a task's body by the policy (transient errors of its target), logging each retry in the run's log."""
    return run(call, policy, sleep=sleep, label=label, logger=_run_logger())[0]


def _run_logger() -> logging.Logger:
    try:
        from prefect import get_run_logger

        return get_run_logger()  # type: ignore[return-value]
    except Exception:  # outside a Prefect run
        return log


def _exception(state) -> BaseException | None:
    try:
        result = state.result(raise_on_failure=False)
    except Exception as exc:  # the result could not be read back: treat it as the failure itself
        return exc
    return result if isinstance(result, BaseException) else None


def retry_condition(task, task_run, state) -> bool:
    """A Prefect `retry_condition_fn`, answering at once: retry when another worker held a lease, or
    when the interpreter raised its spurious AST error (models.errors.spurious_interpreter_error).

    A target's transient error is not retried here: the runner inside the task has already spent
    the policy's tries on it, waiting out each Retry-After.
    """
    error = _exception(state)
    return isinstance(error, LockTimeout) or (error is not None and spurious_interpreter_error(error))


def task_options(policy: RetryPolicy) -> dict:
    """Options for `task.with_options(...)`: Prefect retries a lease held elsewhere; the runner does the rest."""
    return dict(retries=policy.attempts - 1, retry_delay_seconds=delays(policy),
                retry_jitter_factor=policy.jitter or None, retry_condition_fn=retry_condition)
