"""Who may call the event API: a Standard Webhooks signature, a bearer token, or (if enabled) the
legacy X-Outbound-Signature; the signature scheme itself is deployments.webhooks'.
"""

import hashlib
import hmac
from typing import Optional

from deployments import webhooks
from models.config import ApiSettings
from models.secrets import SecretError, resolve
from models.validation import InvalidInput

LEGACY_SIGNATURE_HEADER = "X-Outbound-Signature"


class Authenticator:
    """Check a request's Standard Webhooks signature, bearer token or (if enabled) legacy signature.

    The secrets are resolved once, when the API starts, and never shown: a webhook secret that is
    not in the `whsec_<base64>` form stops the start with its field and reference named.
    """

    def __init__(self, settings: Optional[ApiSettings]):
        if settings is None or not (settings.webhook_secrets or settings.token or settings.legacy_signature):
            raise InvalidInput("configuration", ["api: set api.webhook_secrets and/or api.token "
                                                 "(secret references) before starting the event API"])
        self._keys, problems = [], []
        for i, ref in enumerate(settings.webhook_secrets):
            try:
                self._keys.append(webhooks.secret_key(resolve(ref)))
            except SecretError as exc:
                problems.append(f"api.webhook_secrets[{i}]: {exc}")
            except ValueError as exc:
                problems.append(f"api.webhook_secrets[{i}] ({ref}): {exc}")
        if problems:
            raise InvalidInput("configuration", problems)
        self._token = resolve(settings.token).encode() if settings.token else None
        self._hmac = resolve(settings.hmac_secret).encode() if settings.legacy_signature else None

    def __repr__(self) -> str:
        return "Authenticator(<secrets hidden>)"

    def check(self, headers, payload: bytes, legacy_payload: Optional[bytes] = None) -> Optional[str]:
        """None when the request is authenticated, else why not (never a secret).

        `payload` is what a webhook signature covers after `id.timestamp.`; the legacy signature
        covers `legacy_payload` (default: the same).
        """
        auth = headers.get("authorization", "")
        if self._token is not None and auth[:7].lower() == "bearer ":
            if hmac.compare_digest(auth[7:].strip().encode(), self._token):
                return None
            return "bad bearer token"
        if self._keys and headers.get(webhooks.SIGNATURE_HEADER):
            return webhooks.verify(self._keys, headers, payload)
        legacy = headers.get(LEGACY_SIGNATURE_HEADER.lower(), "")
        if self._hmac is not None and legacy.startswith("sha256="):
            signed = payload if legacy_payload is None else legacy_payload
            expected = hmac.new(self._hmac, signed, hashlib.sha256).hexdigest()
            return None if hmac.compare_digest(legacy[7:].strip().lower().encode(), expected.encode()) else \
                "bad X-Outbound-Signature"
        return "missing webhook-signature headers or bearer token"


def sign(secret: str | bytes, body: bytes) -> str:
    """The legacy X-Outbound-Signature value for `body` (only accepted with api.legacy_signature: true)."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
