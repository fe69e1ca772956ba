"""OAuth 2.0 parts the API sandboxes share: opaque bearer tokens, JWT bearer assertions, RSA keys.

The grant rules and error texts stay with each API (Google's and Salesforce's differ); here is what
is the same everywhere: a token is an unguessable string carrying its grant until it expires or is
revoked, and an assertion is an RS256 JWT checked against a registered public key.
"""

import secrets
import threading
import time

import jwt


class Tokens:
    """Issued access tokens, each with its grant and expiry (monotonic clock); `issued` counts them."""

    def __init__(self):
        self._grants: dict[str, tuple[float, object]] = {}
        self._lock = threading.Lock()
        self.issued = 0

    def issue(self, grant, lifetime: float, prefix: str = "", size: int = 32) -> str:
        token = prefix + secrets.token_urlsafe(size)
        with self._lock:
            now = time.monotonic()
            self._grants = {t: v for t, v in self._grants.items() if v[0] > now}
            self._grants[token] = (now + lifetime, grant)
            self.issued += 1
        return token

    def check(self, token: str):
        """The grant `token` carries, or None when it is unknown, expired or revoked."""
        with self._lock:
            expires, grant = self._grants.get(token, (0.0, None))
            return grant if expires > time.monotonic() else None

    def revoke(self) -> None:
        with self._lock:
            self._grants.clear()


class AssertionRefused(Exception):
    """An assertion that did not decode or verify; `reason` is PyJWT's error name (ExpiredSignatureError...)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def assertion_claims(assertion: str, key=None, audiences=(), require=(), leeway: float = 0) -> dict:
    """The claims of an RS256 assertion, verified as signed by `key` for one of `audiences` when `key`
    is given (without it, to learn whose key should verify it)."""
    try:
        if key is None:
            return jwt.decode(assertion, options={"verify_signature": False})
        return jwt.decode(assertion, key, algorithms=["RS256"], audience=list(audiences), leeway=leeway,
                          options={"require": list(require)})
    except jwt.PyJWTError as exc:
        raise AssertionRefused(type(exc).__name__) from None


def assertion_key_id(assertion: str) -> str | None:
    """The `kid` in the assertion's header."""
    try:
        return jwt.get_unverified_header(assertion).get("kid")
    except jwt.PyJWTError as exc:
        raise AssertionRefused(type(exc).__name__) from None


def rsa_key_pem() -> tuple[str, str]:
    """A fresh RSA key pair (private PEM, public PEM), as a service account or connected app holds."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public
