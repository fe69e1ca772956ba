"""Salesforce sign-in: an OAuth 2.0 access token and instance URL (JWT bearer, password or client credentials)."""

import time
from typing import Optional

import requests

from connectors.errors import ConfigError, TransientError, retry_after_seconds, token_error
from models.config import SalesforceSettings

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


class TokenSource:
    """Fetches an access token and the instance URL from the login server; holds the secrets."""

    def __init__(self, settings: SalesforceSettings, session: requests.Session, *, client_id: str,
                 client_secret: Optional[str] = None, password: Optional[str] = None,
                 security_token: Optional[str] = None, private_key: Optional[str] = None):
        self.kind = settings.auth.type
        self.login_url = settings.login_url
        self.token_url = f"{settings.login_url}/services/oauth2/token"
        self.audience = settings.auth.audience or settings.login_url
        self.username = settings.auth.username
        self.client_id = client_id
        self._session = session
        self._client_secret, self._password, self._security_token = client_secret, password, security_token
        self._private_key = private_key
        self.fetched = 0

    def __repr__(self) -> str:
        return f"TokenSource(kind={self.kind!r}, token_url={self.token_url!r}, username={self.username!r})"

    def _form(self) -> dict:
        if self.kind == "jwt":
            import jwt

            claims = {"iss": self.client_id, "sub": self.username, "aud": self.audience,
                      "exp": int(time.time()) + 180}
            try:
                assertion = jwt.encode(claims, self._private_key, algorithm="RS256")
            except (ValueError, TypeError, jwt.PyJWTError) as exc:
                raise ConfigError(f"the JWT private key cannot sign ({type(exc).__name__}): is it an RSA PEM key?") from None
            return {"grant_type": JWT_GRANT, "assertion": assertion}
        if self.kind == "password":
            return {"grant_type": "password", "client_id": self.client_id, "client_secret": self._client_secret,
                    "username": self.username, "password": (self._password or "") + (self._security_token or "")}
        return {"grant_type": "client_credentials", "client_id": self.client_id, "client_secret": self._client_secret}

    def fetch(self) -> tuple[str, str]:
        """Return (access_token, instance_url) from the token endpoint."""
        self.fetched += 1
        try:
            response = self._session.post(self.token_url, data=self._form(), headers={"Accept": "application/json"})
        except requests.RequestException as exc:
            raise TransientError(f"token endpoint {self.token_url}: {type(exc).__name__}", maybe_applied=False) from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or not body.get("access_token") or not body.get("instance_url"):
            error = body.get("error", "no token") if isinstance(body, dict) else "no token"
            detail = body.get("error_description", "") if isinstance(body, dict) else ""
            raise token_error(response.status_code,
                              f"Salesforce refused the {self.kind} login at {self.token_url}: HTTP "
                              f"{response.status_code} {error}" + (f": {detail}" if detail else ""),
                              retry_after=retry_after_seconds(response.headers.get("Retry-After")))
        return body["access_token"], body["instance_url"].rstrip("/")
