"""resolve-policy: which connectors a user belongs on, what to do there, and why.

Level-triggered: the decision depends on the user's state in the store (how they arrived, the
IdPs they came through, their roles and user store), never on the event's payload alone.
"""

from dataclasses import dataclass
from typing import Optional

from models.config import ORG_TRIGGERS, Config, ConnectorConfig
from models.identity import UserView
from models.kinds import Intent


@dataclass(frozen=True)
class Decision:
    connector: str
    action: Intent  # provision | deprovision | skip
    reason: str
    mode: Optional[str] = None  # for deprovision: delete | disable | none


def held_names(user: UserView, nesting: str) -> frozenset[str]:
    """What a role rule is met by: the user's roles and groups, and with `flatten` the groups they are
    in through nested groups (a member of eng-platform, nested in engineering, holds engineering)."""
    return user.roles | user.groups | (user.inherited if nesting == "flatten" else frozenset())


def scope(user: UserView, cfg: ConnectorConfig, config: Config) -> tuple[bool, str]:
    """Whether `user` belongs on connector `cfg`, with the reason."""
    if user.deleted:
        return False, "the user was deleted"
    levels = []
    if cfg.organization_level and user.source in (*ORG_TRIGGERS, "import"):
        levels.append(f"organisation-level connector; the user arrived by {user.source}")
    via = [i.name for i in config.identity_providers if i.name in user.idps and cfg.name in i.connectors]
    if via:
        levels.append(f"IdP-level connector of {', '.join(via)}, which the user came through")
    if not levels:
        if cfg.organization_level:
            return False, (f"organisation-level connectors fire for {', '.join(ORG_TRIGGERS)}; the user arrived by "
                           f"{user.source}" + (f" through {', '.join(user.idps)}" if user.idps else ""))
        return False, "not an organisation-level connector, and no IdP the user came through lists it"
    if cfg.user_store_domain and cfg.user_store_domain.upper() != user.user_store.upper():
        return False, f"limited to user store {cfg.user_store_domain}; the user is in {user.user_store}"
    if cfg.roles:
        names = held_names(user, config.nesting(cfg).rules)
        held = sorted(names & set(cfg.roles))
        if not held:
            return False, (f"needs one of the roles {', '.join(cfg.roles)}; the user holds "
                           f"{', '.join(sorted(names)) or 'none'}")
        via = sorted(set(held) - user.roles - user.groups)
        levels.append(f"holds role {', '.join(held)}"
                      + (f" ({', '.join(via)} through nested groups)" if via else ""))
    return True, "; ".join(levels)


def decide(user: UserView, cfg: ConnectorConfig, config: Config, provisioned: bool) -> Decision:
    """The decision for one connector, given whether the user is provisioned there now."""
    if not cfg.enabled:
        return Decision(cfg.name, Intent.SKIP, "the connector is disabled")
    in_scope, why = scope(user, cfg, config)
    if in_scope:
        return Decision(cfg.name, Intent.PROVISION, why)
    if provisioned:
        mode = cfg.deprovision_mode
        return Decision(cfg.name, Intent.DEPROVISION, f"{why}: deprovision ({mode})", mode)
    return Decision(cfg.name, Intent.SKIP, why)


def resolve(user: UserView, config: Config, provisioned_on: set[str]) -> list[Decision]:
    """One decision per configured connector."""
    return [decide(user, cfg, config, cfg.name in provisioned_on) for cfg in config.connectors]

