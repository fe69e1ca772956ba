"""The one error tree: everything the engine raises on purpose is a ProvisioningError.

    ProvisioningError                 code "error"
    ├── ConfigError                   the configuration cannot work (bad secret, unknown profile): stop
    │   ├── SecretError               a secret reference cannot be resolved (names the reference, never a value)
    │   ├── PatternError (ValueError) a username pattern is malformed; says at which position
    │   └── MappingError (ValueError) an attribute mapping cannot be used; names the target and the value
    ├── InvalidInput (ValueError)     refused input (configuration file, event, import row): names every bad field
    ├── LockTimeout (TimeoutError)    a lease is held by someone else: try again later
    ├── Busy                          flows/reconcile.py: another reconciliation holds the connector's lease
    ├── NotStored                     tasks/capabilities.py: profiles were found but the store could not keep them
    ├── PrefectUnavailable (RuntimeError)   deployments/prefect_api.py: no Prefect API reached or started
    ├── StoreUnreachable              models/availability.py: the state store went away during a task (one line)
    └── ConnectorError                connectors/errors.py: a remote call failed
        ├── TransientError            worth retrying later (5xx, timeouts, dropped connections)
        │   ├── RateLimited           the target asked us to slow down (429, quota); `retry_after` seconds
        │   ├── OutcomeUnknown        sent, but no answer says whether it applied: look before resending
        │   └── Quarantined           tasks/health.py: the connector is in back-off; nothing was sent
        ├── NotFound                  the account is not there: re-create or treat as gone
        ├── AlreadyExists             a uniqueness conflict: find the account and adopt it
        ├── Rejected                  the target refused the request (bad field): record, do not retry
        └── AuthFailed                credentials refused even after one refresh: stop, do not retry

The root lives here because models/ is the lowest layer: connectors/, tasks/, flows/ and
deployments/ all import it, and it imports nothing. The second base named in brackets stays for
the callers and libraries that catch by it (pydantic turns a ValueError raised in a validator into
a field error).

`code` is what the store records as the failure's error_code; is_permanent() in
connectors/errors.py decides from it whether retrying an event can help. Only ConfigError's own
"config" is permanent: its subclasses keep codes of their own so that a failure that may heal
(a secret set later) is still retried.
"""

from typing import Optional


class ProvisioningError(Exception):
    code = "error"


class ConfigError(ProvisioningError):
    code = "config"


class SecretError(ConfigError):
    """A reference that cannot be resolved (names the reference, never a value)."""

    code = "secret"


class PatternError(ConfigError, ValueError):
    """A username pattern that cannot be parsed; the message gives the position of the mistake."""

    code = "pattern"


class MappingError(ConfigError, ValueError):
    """A mapping that cannot be used; the message names the target and the value."""

    code = "mapping"

    def __init__(self, message: str, problems: Optional[list[str]] = None):
        super().__init__(message)
        self.problems = problems or [message]


class InvalidInput(ProvisioningError, ValueError):
    """Input that was refused; `str()` names every bad field and its value."""

    code = "invalid_input"

    def __init__(self, what: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"invalid {what}:\n" + "\n".join(f"  - {p}" for p in problems))


class LockTimeout(ProvisioningError, TimeoutError):
    """A lease another holder keeps; the message names the holder and since when."""

    code = "busy"


def spurious_interpreter_error(error: BaseException) -> bool:
    """CPython gh-106905: `SystemError: AST constructor recursion depth mismatch`, raised by Python 3.11
    before 3.11.8 (3.12 before 3.12.2) when two threads build AST objects at once. A race inside the
    interpreter, not a fault of the work: the same work run again succeeds."""
    return isinstance(error, SystemError) and "AST constructor recursion depth mismatch" in str(error)

