"""A task that loses the state store fails in one line: no driver text, no traceback in Prefect's log.

The store going away is no fault of the task: the flow run ends Failed naming the store
(flows.provision) and the events run again when it returns. The driver's exception (several lines:
the SQL, its parameters, a link) and Prefect's traceback of it would only bury that message, so a
task raises `StoreUnreachable` instead, and Prefect's run loggers leave out the traceback of any
store error (a task without retries logs its failure with one).
"""

import functools
import logging
from typing import Callable, TypeVar

from models.availability import STORE_UNAVAILABLE, StoreUnreachable, unreachable_error

F = TypeVar("F", bound=Callable)


def store_errors_plain(fn: F) -> F:
    """Re-raise a store error of `fn` as a one-line `StoreUnreachable` (still a STORE_UNAVAILABLE to callers)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except StoreUnreachable:
            raise
        except STORE_UNAVAILABLE as exc:
            raise unreachable_error(exc) from None

    return wrapper  # type: ignore[return-value]


class _NoStoreTraceback(logging.Filter):
    """Keep the line of a record about a store error, drop its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if isinstance(record.exc_info, tuple) else None
        if isinstance(error, STORE_UNAVAILABLE):
            record.exc_info, record.exc_text = None, None
        return True


_FILTER = _NoStoreTraceback()
for _name in ("prefect.task_runs", "prefect.flow_runs"):
    logging.getLogger(_name).addFilter(_FILTER)  # added once: a module runs once per process
