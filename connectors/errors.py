"""The connector part of the error tree: what every connector translates its failures into, at its edge.

    ConnectorError           a remote call failed (a ProvisioningError: models/errors.py draws the whole tree)
    ├── TransientError       worth retrying later (5xx, timeouts, dropped connections);
    │   │                    `maybe_applied`: a write may have taken effect (False when it was
    │   │                    refused before any work: the connection refused, the token endpoint)
    │   ├── RateLimited      the target asked us to slow down (429, quota); `retry_after` seconds
    │   └── OutcomeUnknown   sent, but no answer says whether it applied (a bulk operation the
    │                        response leaves out, a bulk request cut off, and the target could
    │                        not be read to tell): never resent until a read shows it absent
    ├── NotFound             the account is not there: re-create or treat as gone
    ├── AlreadyExists        a uniqueness conflict: find the account and adopt it
    ├── Rejected             the target refused the request (bad field): record, do not retry
    ├── AuthFailed           credentials refused even after one refresh: stop, do not retry
    └── DryRunRejected       a dry run reached a write: not sent; says what would have been sent

Also here: the one status→error table (`for_status`), the one token-endpoint rule (`token_error`)
and which error codes are permanent (`is_permanent`). ProvisioningError and ConfigError (a
configuration that cannot work) are re-exported, so a connector imports every error it raises from
this module.

Messages name the field and the target's own detail, never a credential.
"""

from contextlib import contextmanager
from typing import Iterator

from models.errors import ConfigError, ProvisioningError

__all__ = ["AlreadyExists", "AuthFailed", "ConfigError", "ConnectorError", "DryRunRejected", "NotFound", "OutcomeUnknown",
           "PERMANENT_CODES", "ProvisioningError", "RateLimited", "Rejected", "TransientError", "for_status",
           "is_permanent", "read_applies_nothing", "retry_after_seconds", "token_error"]


class ConnectorError(ProvisioningError):
    code = "connector"

    def __init__(self, message: str, *, status: int | None = None, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.field = field


class TransientError(ConnectorError):
    code = "transient"
    maybe_applied = True  # a 5xx or a lost answer says nothing about whether a write took effect

    def __init__(self, message: str, *, retry_after: float | None = None, maybe_applied: bool | None = None, **kw):
        super().__init__(message, **kw)
        self.retry_after = retry_after
        if maybe_applied is not None:
            self.maybe_applied = maybe_applied


class RateLimited(TransientError):
    code = "rate_limited"
    maybe_applied = False  # a refusal before any work


class OutcomeUnknown(TransientError):
    """The request went out but nothing says whether it applied; resending blindly may repeat it."""

    code = "outcome_unknown"


class NotFound(ConnectorError):
    code = "not_found"


class AlreadyExists(ConnectorError):
    code = "already_exists"


class Rejected(ConnectorError):
    code = "rejected"


class AuthFailed(ConnectorError):
    code = "auth_failed"


class DryRunRejected(ConnectorError):
    """A dry-run connector refused to send a write: `method`, `path` and `body` say what it would have sent.

    A ConnectorError so a batch records it per operation like any other answer; never headers, so
    no credential travels with it.
    """

    code = "dry_run"

    def __init__(self, method: str, path: str, body: object = None):
        super().__init__(f"dry-run: {method} {path} not sent")
        self.method, self.path, self.body = method, path, body


@contextmanager
def read_applies_nothing(method: str) -> Iterator[None]:
    """Around one request: a GET that fails transiently applied nothing, so the write it was read for
    (a capability probe, the read before a PATCH) was never sent."""
    try:
        yield
    except TransientError as exc:
        if method == "GET":
            exc.maybe_applied = False
        raise


def retry_after_seconds(value: str | None) -> float | None:
    """Parse a Retry-After header (seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from datetime import datetime, timezone
    from email.utils import parsedate_to_datetime

    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds())
    except (TypeError, ValueError):
        return None


def for_status(status: int, text: str, *, retry_after: float | None = None, field: str | None = None,
               rate_limited: bool = False) -> ConnectorError:
    """The error an HTTP error status means, for targets that speak plain HTTP semantics."""
    if status == 429 or rate_limited:
        return RateLimited(text, status=status, retry_after=retry_after)
    if status in (401, 403):
        return AuthFailed(text, status=status)
    if status == 404:
        return NotFound(text, status=status)
    if status == 409:
        return AlreadyExists(text, status=status)
    if status in (408, 412) or status >= 500:
        return TransientError(text, status=status, retry_after=retry_after)
    return Rejected(text, status=status, field=field)


def token_error(status: int, text: str, *, retry_after: float | None = None) -> ConnectorError:
    """The error a token endpoint's refusal means, the same for every connector.

    A 429 is the endpoint pacing us, and a 5xx or 408 says nothing about the credentials: both pass.
    Any other refusal (400/401 invalid_client, invalid_grant, ...) is the credentials: AuthFailed.
    """
    if status == 429:
        return RateLimited(text, status=status, retry_after=retry_after)
    if status >= 500 or status == 408:  # no token, so the call it was for was never sent
        return TransientError(text, status=status, retry_after=retry_after, maybe_applied=False)
    return AuthFailed(text, status=status)


# A target's own refusal of this user: running the event again changes nothing until someone acts.
# Any other failure (a 5xx, a time-out, a quarantine, an orchestrator or store error) passes.
PERMANENT_CODES = frozenset({"rejected", "collision", "already_exists", "not_found", "config"})


# Failures an operator fixes in the connector's credential or configuration, then checks with
# `outbound check --connector <name>`.
CREDENTIAL_CODES = frozenset({"auth_failed", "secret", "config"})


def is_permanent(code: str | None) -> bool:
    """Whether a failure with this error code is final for the event (see PERMANENT_CODES)."""
    return code in PERMANENT_CODES
