"""generate-username: the remote username from a provisioning pattern ({UN}, {UD}, {TD}, {IDP}).

WSO2-compatible: tokens are joined by the separator, UD/TD/IDP lose any separator they contain,
the result is lower-cased, and with a `domain` any `@` becomes `.` before `@<domain>` is added.
"""

from dataclasses import dataclass
from typing import Callable, Optional

from connectors.errors import Rejected
from models.config import Config, ConnectorConfig
from models.identity import UserView
from models.patterns import parse_pattern


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


MAX_SUFFIX = 99


class Collision(Rejected):
    """Two local users would share one remote username."""

    code = "collision"


def _suffixed(mapped: str, generated: str) -> bool:
    return any(mapped == with_suffix(generated, n) for n in range(2, MAX_SUFFIX + 1))


def assign_names(users: list[UserView], cfg: ConnectorConfig, config: Config, mapped: dict[str, str],
                 taken: dict[str, str], names: dict[str, str], check: Callable[[str], None] = lambda _: None,
                 ) -> tuple[dict[str, GeneratedName], dict[str, Rejected]]:
    """The remote username of each user on `cfg`, and the users who cannot have one (and why).

    The one rule for every path (an event, a batch, a full reconciliation): a user keeps the name
    already provisioned when it is the pattern's, or the pattern's with a collision suffix; else the
    pattern's name, unless another user holds it. Then `fail` refuses, naming both users, and
    `suffix` takes the first free `name2`, `name3`, … — in a stable order (the users as given, which
    callers sort by creation), so a name once given never moves.

    mapped: local id -> remote name already provisioned; taken: lower-cased remote name -> local id
    holding it (every mapped name of the connector that matters here); names: local id -> user@STORE
    for messages; check: the target's own username rule (raises Rejected).
    """
    out: dict[str, GeneratedName] = {}
    errors: dict[str, Rejected] = {}
    holders = dict(taken)
    for user in users:
        generated = user_name_for(user, cfg, config)
        have = mapped.get(user.id)
        if have is not None and (have == generated.user_name or
                                 (cfg.on_collision == "suffix" and _suffixed(have, generated.user_name))):
            kept = generated if have == generated.user_name else GeneratedName(
                have, generated.how + "; collision suffix kept")
            out[user.id] = kept
            holders[have.lower()] = user.id
            continue
        candidate, n = generated.user_name, 1
        while (holder := holders.get(candidate.lower())) not in (None, user.id):
            if cfg.on_collision != "suffix":
                errors[user.id] = Collision(
                    f"username {candidate!r} on {cfg.name} is already provisioned for "
                    f"{names.get(holder, holder)}; {user.qualified_name} would collide "
                    f"(set on_collision: suffix to add a numeric suffix)", field="user_name")
                break
            n += 1
            if n > MAX_SUFFIX:
                errors[user.id] = Collision(f"no free username for {user.qualified_name} on {cfg.name}: "
                                            f"{generated.user_name} to {candidate} are all taken", field="user_name")
                break
            candidate = with_suffix(generated.user_name, n)
        if user.id in errors:
            continue
        try:
            check(candidate)
        except Rejected as exc:
            errors[user.id] = exc
            continue
        if have is not None:
            holders.pop(have.lower(), None)  # a renamed account frees its old name
        holders[candidate.lower()] = user.id
        out[user.id] = generated if n == 1 else GeneratedName(candidate, f"{generated.how}; suffix {n} (collision)")
    return out, errors

