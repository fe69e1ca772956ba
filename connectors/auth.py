"""requests auth handlers for the credentials a connector's session carries."""

import threading
import time

import requests
from requests.auth import AuthBase

from connectors.errors import TransientError, retry_after_seconds, token_error


class BearerToken(AuthBase):
    def __init__(self, token: str):
        self._token = token

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "BearerToken(***)"


class ClientCredentials(AuthBase):
    """OAuth 2.0 client credentials grant: a cached token, refreshed before expiry or on demand."""

    def __init__(self, token_url: str, client_id: str, client_secret: str, scope: str | None,
                 session: requests.Session):
        self.token_url, self.client_id, self._secret, self.scope = token_url, client_id, client_secret, scope
        self._session = session  # a separate session: the token request must not carry this auth
        self._token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ClientCredentials(token_url={self.token_url!r}, client_id={self.client_id!r})"

    def refresh(self) -> None:
        data = {"grant_type": "client_credentials"}
        if self.scope:
            data["scope"] = self.scope
        try:
            response = self._session.post(self.token_url, data=data, auth=(self.client_id, self._secret))
        except requests.RequestException as exc:
            raise TransientError(f"token endpoint {self.token_url}: {type(exc).__name__}", maybe_applied=False) from None
        if response.status_code != 200:
            raise token_error(response.status_code, f"token endpoint {self.token_url}: HTTP {response.status_code}",
                              retry_after=retry_after_seconds(response.headers.get("Retry-After")))
        body = response.json()
        self._token = body["access_token"]
        self._expires = time.monotonic() + float(body.get("expires_in", 3600)) - 30

    def __call__(self, request):
        with self._lock:
            if self._token is None or time.monotonic() >= self._expires:
                self.refresh()
            request.headers["Authorization"] = f"Bearer {self._token}"
        return request
