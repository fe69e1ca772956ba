"""The capability probe behind `outbound check`: what each connector's target can do, read-only.

For every connector: can the target be reached (and its TLS certificate trusted), are the
credentials accepted (a token really obtained and used), and what the target offers — per type
in each connector package's `probe` module. The connector is built in dry-run, so not one
mutating request can leave. The result is a capability profile:

    {connector, type, usable, checked_at, capabilities: {...}, problems: [{severity, what, fix}]}

`usable` is False when any problem is an error (the connector cannot work as configured);
warnings say what works differently (PUT instead of PATCH, one request per operation). Every
problem names what to change. Messages come from the connectors' errors: never a credential.
"""

import importlib
import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import requests

from connectors.errors import ConfigError, ConnectorError
from models.config import ConnectorConfig
from models.secrets import SecretError
from models.tables import utcnow

log = logging.getLogger("outbound.probe")
_MODULES = {"scim2": "connectors.scim2.probe", "google": "connectors.google.probe",
            "salesforce": "connectors.salesforce.probe"}


@dataclass
class Findings:
    connector: str
    type: str
    capabilities: dict[str, Any] = field(default_factory=dict)
    problems: list[dict[str, str]] = field(default_factory=list)

    def error(self, what: str, fix: str) -> None:
        self.problems.append({"severity": "error", "what": what, "fix": fix})

    def warn(self, what: str, fix: str) -> None:
        self.problems.append({"severity": "warning", "what": what, "fix": fix})

    @property
    def usable(self) -> bool:
        return not any(p["severity"] == "error" for p in self.problems)

    def profile(self) -> dict[str, Any]:
        return {"connector": self.connector, "type": self.type, "usable": self.usable,
                "checked_at": utcnow().isoformat(), "capabilities": self.capabilities, "problems": self.problems}


def check(cfg: ConnectorConfig) -> dict[str, Any]:
    """Probe one connector's target; never raises for what the target or the configuration does."""
    found = Findings(cfg.name, cfg.type)
    module = importlib.import_module(_MODULES[cfg.type])
    try:
        module.probe(cfg, found)
    except SecretError as exc:
        found.error(f"connector {cfg.name}: {exc}", "set the secret the configuration references (env var, file or "
                                                   "Prefect Secret block)")
    except ConfigError as exc:
        found.error(str(exc), f"fix connector {cfg.name}'s configuration or the secret it references")
    except ConnectorError as exc:  # a failure no check above anticipated: still named, still a profile
        found.error(f"{type(exc).__name__}: {exc}", "see the message; run outbound check again once fixed")
    return found.profile()


def summary(profile: dict[str, Any]) -> list[str]:
    """The profile's findings, one line each, for the terminal."""
    module = importlib.import_module(_MODULES[profile["type"]])
    return module.summary(profile["capabilities"])


def network_problem(exc: BaseException, where: str, prefix: str, timeout: float) -> Optional[tuple[str, str]]:
    """(what, fix) when `exc` (or what caused it) says the target could not be reached or trusted."""
    chain, seen = [], exc
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for err in chain:
        if isinstance(err, requests.exceptions.SSLError):
            reason = "certificate not trusted" if "CERTIFICATE_VERIFY_FAILED" in str(err) else "TLS handshake failed"
            return (f"TLS: {where}: {reason}",
                    f"set {prefix}.ca_bundle to the CA file that signed the server's certificate "
                    f"(or fix the server's certificate)")
    for err in chain:
        if isinstance(err, requests.Timeout):
            return (f"{where}: no answer within {timeout:g} s",
                    f"check the address and any firewall; or raise {prefix}.timeout")
        if isinstance(err, requests.ConnectionError):
            return (f"{where}: cannot connect ({_reason(err)})",
                    "check the URL in the configuration and that the server is running and reachable from here")
    return None


def _reason(err: requests.ConnectionError) -> str:
    text = str(err)
    for marker, reason in (("Connection refused", "connection refused"), ("Name or service not known", "unknown host"),
                           ("nodename nor servname", "unknown host"), ("Temporary failure in name resolution",
                                                                       "name resolution failed")):
        if marker in text:
            return reason
    return type(err).__name__


def tls_of(url: str, settings) -> tuple[str, Optional[tuple[str, str]]]:
    """How the connection is secured, and a warning when it is not (really)."""
    if url.startswith("http://"):
        from urllib.parse import urlparse

        from models.config import _is_loopback

        if _is_loopback(urlparse(url).hostname):  # this machine: nothing crosses a network
            return "none (http on loopback)", None
        return "none (http)", ("the connection is not encrypted (http://, allowed by allow_insecure_http)",
                               "use an https:// URL and remove allow_insecure_http")
    if not settings.verify_tls:
        return "https, certificate NOT verified", ("TLS certificates are not verified (verify_tls: false)",
                                                   "set ca_bundle to the server's CA file and remove verify_tls: false")
    return "https, verified" + (" against ca_bundle" if settings.ca_bundle else ""), None
