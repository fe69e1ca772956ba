"""The requests.Session a connector is handed: pooled connections, TLS trust, a timeout."""

import requests
import urllib3
from requests.adapters import HTTPAdapter

from models.config import HttpSettings

USER_AGENT = "outbound-provisioning/0.1"


class TimeoutSession(requests.Session):
    """A session whose requests time out unless told otherwise."""

    def __init__(self, timeout: float):
        super().__init__()
        self.timeout = timeout

    def request(self, method, url, **kwargs):
        kwargs.setdefault("timeout", self.timeout)
        return super().request(method, url, **kwargs)


def build_session(settings: HttpSettings, pool_size: int = 16) -> requests.Session:
    session = TimeoutSession(settings.timeout)
    session.headers["User-Agent"] = USER_AGENT
    adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    if settings.ca_bundle:
        # REQUESTS_CA_BUNDLE in the environment would override session.verify: ours must win.
        session.trust_env = False
        session.verify = settings.ca_bundle
    elif not settings.verify_tls:
        session.verify = False
    return session


def maybe_sent(exc: Exception) -> bool:
    """Whether a failed request may have reached the server (not refused, not a connect timeout)."""
    if isinstance(exc, requests.ConnectTimeout):
        return False
    if isinstance(exc, requests.ConnectionError):
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        return not isinstance(reason, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError))
    return True
