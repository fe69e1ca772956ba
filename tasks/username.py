"""generate-username: the remote username from a provisioning pattern ({UN}, {UD}, {TD}, {IDP}).

WSO2-compatible: tokens are joined by the separator, UD/TD/IDP lose any separator they contain,
the result is lower-cased, and with a `domain` any `@` becomes `.` before `@<domain>` is added.
"""

from dataclasses import dataclass
from typing import Optional

from prefect import task
from prefect.cache_policies import NO_CACHE

from models.config import Config, ConnectorConfig
from models.identity import UserView
from models.patterns import TOKENS, PatternError, parse_pattern  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class GeneratedName:
    user_name: str
    how: str  # how the pattern built it, for `outbound explain`


def build_user_name(pattern: str, separator: str, domain: Optional[str], *, username: str,
                    user_store: str = "PRIMARY", tenant: str = "", idp: Optional[str] = None,
                    lower: bool = True) -> GeneratedName:
    values = {"UN": username, "UD": user_store or "PRIMARY", "TD": tenant, "IDP": idp or ""}
    parts, steps = [], []
    for token in parse_pattern(pattern):
        value = values[token]
        if token != "UN" and separator:
            value = value.replace(separator, "")  # literal, not WSO2's accidental regex
        if value:
            parts.append(value)
            steps.append(f"{token}={value!r}")
    name = separator.join(parts)
    if lower:
        name = name.lower()
    how = f"{pattern} with separator {separator!r}: {', '.join(steps)}"
    if domain and not name.endswith(domain.lower()):
        name = name.replace("@", ".") + "@" + domain.lower()
        how += f"; domain {domain!r} appended"
    return GeneratedName(name, how)


def user_name_for(user: UserView, cfg: ConnectorConfig, config: Config) -> GeneratedName:
    """The username `user` should have on connector `cfg`."""
    idp = user.idps[0] if user.idps else None
    if cfg.pattern is None and cfg.type == "scim2":
        # SCIM targets get the local username as it is, as WSO2's SCIM connector sends it.
        return build_user_name("{UN}", cfg.separator, cfg.domain, username=user.username,
                               user_store=user.user_store, tenant=config.tenant_domain, idp=idp, lower=False)
    return build_user_name(cfg.pattern or "{UN}", cfg.separator, cfg.domain, username=user.username,
                           user_store=user.user_store, tenant=config.tenant_domain, idp=idp)


def with_suffix(user_name: str, n: int) -> str:
    """`alice@x.com` → `alice2@x.com`: a stable numeric suffix before the domain."""
    local, at, domain = user_name.partition("@")
    return f"{local}{n}{at}{domain}"



@task(name="generate-username", task_run_name="generate-username {connector_name}", cache_policy=NO_CACHE)
def generate_username(user: UserView, connector_name: str, config: Config) -> GeneratedName:
    """The remote username for one connector: pattern, collision check, the target's own rules."""
    from connectors.factory import get_connector
    from tasks.provision import remote_name_for  # it needs the store; this module stays pure

    cfg = config.connector(connector_name)
    return remote_name_for(user, cfg, config, get_connector(cfg))
