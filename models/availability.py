"""Is the state store reachable? The errors that mean "not now" rather than "never"."""

from sqlalchemy import exc, text

from models.errors import ProvisioningError


class StoreUnreachable(ProvisioningError):
    """The store went away during a task: one line naming it (never its password), for the task's state and log."""


# Raised (wrapped by SQLAlchemy) when the store cannot be reached or drops the connection:
# the caller should answer "try again later", not fail the request for good.
STORE_UNAVAILABLE = (exc.OperationalError, exc.InterfaceError, exc.DisconnectionError, exc.TimeoutError,
                     StoreUnreachable)
UNREACHABLE = "state store unreachable"  # how a run's message begins when the store was the problem


def unreachable_error(error: BaseException) -> StoreUnreachable:
    """`state store unreachable: <url without its password> (OperationalError)`: the driver's lines left out."""
    from models.db import database_url, redacted

    return StoreUnreachable(f"{UNREACHABLE}: {redacted(database_url())} ({type(error).__name__})")


def store_up() -> bool:
    """True when the store answers a trivial query (migrating it first if this is its first use)."""
    from models.db import get_engine

    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except STORE_UNAVAILABLE:
        return False


def unreachable_message(consequence: str = "the events stay accepted and are retried when it returns") -> str:
    """`state store unreachable: <url without its password>; <consequence>`: a failed run's message."""
    from models.db import database_url, redacted

    return f"{UNREACHABLE}: {redacted(database_url())}; {consequence}"
