"""The requests.Session a connector is handed: pooled connections, TLS trust, a timeout."""

import requests
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
