"""Salesforce probe: the API versions offered, a login, the profile, the User object's required
fields, and the remaining daily API requests (`/limits`). Reads only, through a dry-run connector.
"""

from typing import Any

from connectors.errors import AuthFailed, ConfigError, ConnectorError, RateLimited, TransientError
from connectors.probe import Findings, network_problem, tls_of
from models.target_rules import PERMISSION_SETS

# Fields the connector itself fills on every create (see SalesforceConnector._create_fields).
FILLED = {"Username", "LastName", "Email", "Alias", "ProfileId", "IsActive", "FirstName", "FederationIdentifier"}
LOW_CALLS = 0.1  # warn when fewer than this share of the daily API requests is left


def probe(cfg, found: Findings) -> None:
    from connectors.http import build_session
    from connectors.salesforce import build

    settings, caps = cfg.salesforce, found.capabilities
    caps["login_url"], caps["api_version"], caps["auth"] = settings.login_url, settings.api_version, settings.auth.type
    caps["tls"], insecure = tls_of(settings.login_url, settings)
    if insecure:
        found.warn(*insecure)
    connector = build(cfg, dry_run=True)
    try:
        token, instance_url = connector.tokens.fetch()
    except AuthFailed as exc:
        caps["authenticated"] = False
        found.error(str(exc), f"check salesforce.auth ({settings.auth.type}) of connector {cfg.name}: the connected "
                              "app's client_id, the user, and the key or secret it references")
        return
    except TransientError as exc:
        problem = network_problem(exc, f"POST {settings.login_url}/services/oauth2/token", "salesforce",
                                  settings.timeout)
        if problem is None and "SSLError" in str(exc):  # the token source names only the error's type
            problem = (f"TLS: {settings.login_url}: certificate not trusted",
                       "set salesforce.ca_bundle to the CA file that signed the server's certificate")
        found.error(*(problem or (f"token endpoint: {exc}", "try again later")))
        return
    caps["instance_url"] = instance_url
    session = build_session(settings)
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    versions = _get(session, f"{instance_url}/services/data", headers)
    offered = [v.get("version") for v in versions] if isinstance(versions, list) else []
    caps["api_versions"] = offered[-3:] if offered else None
    if offered and settings.api_version not in offered:
        found.error(f"API version {settings.api_version} is not offered by this org (latest {offered[-1]})",
                    f"set salesforce.api_version: \"{offered[-1]}\" for connector {cfg.name}")
        return
    try:
        connector._json_call("GET /sobjects/User/describe", "GET", "sobjects/User/describe")
        caps["authenticated"] = True
        _profile(cfg, connector, found)
        _required_fields(cfg, connector, found)
        _limits(connector, found)
        _access(cfg, connector, found)
    except AuthFailed as exc:
        caps["authenticated"] = False
        found.error(f"a token was issued but the API refused it: {exc}",
                    "give the integration user the API Enabled permission")
        return
    except RateLimited as exc:
        caps["authenticated"] = True  # the token was taken; the org has no requests left to serve
        found.error(f"no daily API requests are left: {exc}",
                    "wait for the 24-hour window to move on, or raise the org's API request limit")


def _get(session, url: str, headers: dict) -> Any:
    try:
        response = session.get(url, headers=headers)
        return response.json() if response.ok else None
    except (ValueError, OSError):
        return None


def _profile(cfg, connector, found: Findings) -> None:
    try:
        found.capabilities["profile_id"] = connector.profile_id()
        found.capabilities["profile"] = cfg.salesforce.profile
    except ConfigError:
        names = [r.get("Name") for r in connector._query("SELECT Id, Name FROM Profile")]
        found.error(f"Salesforce has no profile named {cfg.salesforce.profile!r}",
                    f"set salesforce.profile to one of: {', '.join(sorted(n for n in names if n))}")


def _required_fields(cfg, connector, found: Findings) -> None:
    describe = connector._json_call("GET /sobjects/User/describe", "GET", "sobjects/User/describe")
    required = sorted(f["name"] for f in (describe or {}).get("fields") or []
                      if f.get("createable") and not f.get("nillable") and not f.get("defaultedOnCreate"))
    found.capabilities["required_fields"] = required
    mapped = tuple(t for t in cfg.attribute_map.extra_targets if t != PERMISSION_SETS)  # not a User field
    given = FILLED | set(cfg.salesforce.defaults) | set(mapped)
    missing = [f for f in required if f not in given]
    if missing:
        found.error(f"the User object requires {', '.join(missing)}, which the connector does not set",
                    f"add {', '.join(missing)} to salesforce.defaults (a fixed value) or to the connector's "
                    f"attributes: (from a user attribute) of connector {cfg.name}")
    fields = {f.get("name"): f for f in (describe or {}).get("fields") or [] if isinstance(f, dict)}
    if fields:
        unknown = [f for f in mapped if f not in fields]
        read_only = [f for f in mapped if f in fields and not fields[f].get("updateable")]
        if unknown:
            custom = sorted(n for n in fields if str(n).endswith("__c"))
            found.error(f"attributes: the User object has no field {', '.join(unknown)}",
                        f"map fields the User object has (custom ones: {', '.join(custom) or 'none'}) "
                        f"in connector {cfg.name}")
        if read_only:
            found.error(f"attributes: {', '.join(read_only)} cannot be written on the User object",
                        f"remove them from the attributes: of connector {cfg.name}")


def _access(cfg, connector, found: Findings) -> None:
    """The names the rules give must exist (Profile, UserRole, PermissionSet), and the objects they
    need must be readable; the free licences are reported."""
    settings, caps = cfg.salesforce, found.capabilities
    checks = [("Profile", "profile_rules", settings.profile_rules), ("UserRole", "role_rules", settings.role_rules)]
    for entity, setting, rules in checks:
        if rules is None:
            continue
        try:
            names = {str(r.get("Name")) for r in connector._table(entity, fresh=True).values()}
        except ConnectorError as exc:
            found.error(f"{entity} cannot be read ({exc}), so salesforce.{setting} cannot be resolved",
                        "give the integration user the View Setup and Configuration permission")
            continue
        for value in rules.literal_values():
            if value not in names:
                found.error(f"salesforce.{setting} gives {value!r}, but Salesforce has no {entity} named {value!r}",
                            f"use one of: {', '.join(sorted(names)) or 'none'}, or create it in Setup")
    if settings.permission_sets:
        try:
            names = {str(r.get("Name")) for r in connector._table("PermissionSet", fresh=True).values()}
            connector._first("SELECT Id, AssigneeId, PermissionSetId FROM PermissionSetAssignment LIMIT 1")
        except ConnectorError as exc:
            found.error(f"permission sets cannot be read ({exc})",
                        "give the integration user the Assign Permission Sets and View Setup and Configuration "
                        "permissions")
        else:
            for grant in settings.permission_sets:
                if grant.name not in names:
                    found.error(f"salesforce.permission_sets names {grant.name!r}, which is not a PermissionSet "
                                f"API Name in this org", "use the permission set's API Name (Setup > Permission Sets)")
    if settings.suspend_mode == "freeze":
        try:
            connector._first("SELECT Id, UserId, IsFrozen FROM UserLogin LIMIT 1")
        except ConnectorError as exc:
            found.error(f"UserLogin cannot be read ({exc}), so suspend_mode: freeze cannot freeze users",
                        "give the integration user the Manage Users permission")
    if settings.check_licences:
        try:
            caps["licences"] = {r["Name"]: {"total": r.get("TotalLicenses"), "used": r.get("UsedLicenses")}
                                for r in connector._query("SELECT Id, Name, TotalLicenses, UsedLicenses FROM UserLicense")}
        except ConnectorError as exc:
            found.warn(f"UserLicense cannot be read ({exc}): creates are sent without checking the free licences",
                       "give the integration user the View Setup and Configuration permission, or set "
                       "salesforce.check_licences: false")


def _limits(connector, found: Findings) -> None:
    try:
        limits = connector._json_call("GET /limits", "GET", "limits") or {}
    except ConnectorError as exc:
        found.warn(f"GET /limits: {exc}", "give the integration user the View Setup and Configuration permission")
        return
    daily = limits.get("DailyApiRequests") or {}
    found.capabilities["daily_api_requests"] = {"max": daily.get("Max"), "remaining": daily.get("Remaining")}
    if daily.get("Max") and daily.get("Remaining") is not None:
        if daily["Remaining"] <= 0:
            found.error("no daily API requests are left: every call is refused until the 24-hour window moves on",
                        "wait, or raise the org's API request limit")
        elif daily["Remaining"] < LOW_CALLS * daily["Max"]:
            found.warn(f"only {daily['Remaining']} of {daily['Max']} daily API requests are left",
                       "schedule large reconciliations later, or raise the org's limit")


def summary(caps: dict[str, Any]) -> list[str]:
    lines = [f"{caps.get('login_url')}  TLS: {caps.get('tls')}  auth: {caps.get('auth')}"
             + (f" ({'accepted' if caps.get('authenticated') else 'not accepted'})" if "authenticated" in caps else "")]
    if caps.get("api_versions"):
        lines.append(f"API version {caps['api_version']} (latest offered {caps['api_versions'][-1]})")
    if caps.get("profile_id"):
        lines.append(f"profile {caps['profile']} ({caps['profile_id']})")
    if caps.get("required_fields") is not None and "required_fields" in caps:
        lines.append(f"required User fields: {', '.join(caps['required_fields'])}")
    if caps.get("licences"):
        lines.append("licences free: " + ", ".join(f"{n} {v['total'] - v['used']} of {v['total']}"
                                                   for n, v in caps["licences"].items()
                                                   if isinstance(v.get("total"), int) and isinstance(v.get("used"), int)))
    if caps.get("daily_api_requests"):
        d = caps["daily_api_requests"]
        lines.append(f"daily API requests: {d['remaining']} of {d['max']} left")
    return lines
