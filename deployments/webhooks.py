"""Standard Webhooks signatures: sign and verify `webhook-id`, `webhook-timestamp`, `webhook-signature`.

The signed content is `<webhook-id>.<webhook-timestamp>.<payload>`: the raw body for a POST, the
request path as sent (e.g. `/v1/events/evt-1`) for a GET. The signature header holds one or more
space-separated `v1,<base64 HMAC-SHA256>` entries, so that a sender can sign with an old and a new
secret while a secret is rotated. Secrets are `whsec_<base64 of 24 to 64 random bytes>`.

A timestamp more than `TOLERANCE` away from the receiver's clock, in either direction, is refused:
a captured request stops verifying after five minutes.
"""

import base64
import binascii
import hashlib
import hmac
import time
from typing import Iterable, Mapping, Optional

SECRET_PREFIX = "whsec_"
TOLERANCE = 300  # seconds, both ways
MIN_KEY_BYTES, MAX_KEY_BYTES = 24, 64
ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER = "webhook-id", "webhook-timestamp", "webhook-signature"
MAX_ID_LENGTH = 256


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_…` secret; ValueError (never showing the value) when it has another form."""
    expected = f"expected {SECRET_PREFIX}<base64 of {MIN_KEY_BYTES} to {MAX_KEY_BYTES} random bytes>"
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"{expected}; the value does not start with {SECRET_PREFIX}")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{expected}; what follows {SECRET_PREFIX} is not base64") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise ValueError(f"{expected}; it decodes to {len(key)} bytes")
    return key


def new_secret(n_bytes: int = 32) -> str:
    """A fresh random secret in the `whsec_` form."""
    import secrets

    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(n_bytes)).decode()


def signature(key: bytes, msg_id: str, timestamp: int | str, payload: bytes) -> str:
    """One `v1,<base64>` signature entry."""
    signed = f"{msg_id}.{timestamp}.".encode() + payload
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def sign_headers(secret: str | Iterable[str], payload: bytes, *, msg_id: Optional[str] = None,
                 timestamp: Optional[int] = None) -> dict[str, str]:
    """The three headers for `payload`, signed with one secret or several (for senders and tests)."""
    import uuid

    secrets_ = [secret] if isinstance(secret, str) else list(secret)
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {ID_HEADER: msg_id, TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: " ".join(signature(secret_key(s), msg_id, timestamp, payload) for s in secrets_)}


def verify(keys: list[bytes], headers: Mapping[str, str], payload: bytes, *,
           now: Optional[float] = None, tolerance: int = TOLERANCE) -> Optional[str]:
    """None when one signature in the header matches one key; else why not (no secret in the reason)."""
    msg_id, stamp, sigs = (headers.get(h, "") for h in (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER))
    if not (msg_id and stamp and sigs):
        return "missing webhook-id, webhook-timestamp or webhook-signature"
    if len(msg_id) > MAX_ID_LENGTH:
        return f"webhook-id is longer than {MAX_ID_LENGTH} characters"
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
        return "webhook-timestamp must be whole seconds since the epoch"
    now = time.time() if now is None else now
    if abs(now - int(stamp)) > tolerance:
        return f"webhook-timestamp is more than {tolerance} s away from the server's clock"
    offered = [s[3:].encode() for s in sigs.split() if s.startswith("v1,")]
    # Every key against every offered signature, without stopping early: the time taken does not
    # depend on which one matched.
    matched = False
    for key in keys:
        expected = signature(key, msg_id, stamp, payload)[3:].encode()
        for candidate in offered:
            matched |= hmac.compare_digest(candidate, expected)
    return None if matched else "no valid v1 signature"
