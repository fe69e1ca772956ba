"""The one retry policy: exponential backoff with jitter, transient errors only, Retry-After honoured."""

import time

from connectors.errors import TransientError
from models.locks import LockTimeout
from models.config import RetryPolicy


def delays(policy: RetryPolicy) -> list[float]:
    return [min(policy.max_delay, policy.base_delay * 2 ** i) for i in range(max(policy.attempts - 1, 1))]


def _exception(state) -> BaseException | None:
    try:
        result = state.result(raise_on_failure=False)
    except Exception as exc:  # the result could not be read back: treat it as the failure itself
        return exc
    return result if isinstance(result, BaseException) else None


def retry_condition(policy: RetryPolicy):
    """A Prefect `retry_condition_fn`: retry TransientError only, never longer than Retry-After asks."""
    planned = delays(policy)

    def should_retry(task, task_run, state) -> bool:
        exc = _exception(state)
        if isinstance(exc, LockTimeout):  # another worker holds this user: try again later
            return True
        if not isinstance(exc, TransientError):
            return False
        if exc.retry_after:
            # Prefect's own delay for this retry is at least planned*(1-jitter); wait out the rest.
            index = min(max(task_run.run_count - 1, 0), len(planned) - 1)
            scheduled = planned[index] * (1 - policy.jitter)
            if exc.retry_after > scheduled:
                time.sleep(min(exc.retry_after - scheduled, policy.max_delay))
        return True

    return should_retry


def task_options(policy: RetryPolicy) -> dict:
    """Options for `task.with_options(...)` that apply the policy."""
    return dict(retries=policy.attempts - 1, retry_delay_seconds=delays(policy),
                retry_jitter_factor=policy.jitter or None, retry_condition_fn=retry_condition(policy))
