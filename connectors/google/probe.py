"""Google Workspace probe: the delegated admin and the scopes really granted, a read, the domains.

A token is asked for each scope on its own, so the answer names exactly which delegation is
missing; then one users.list read with the connector's own token; then the customer's domains
(with the domain read-only scope, when it is delegated) to verify the connector's `domain`.
"""

from typing import Any

import google.auth.exceptions

from connectors.errors import AuthFailed, ConnectorError, TransientError
from connectors.probe import Findings, network_problem, tls_of

DOMAIN_SCOPE = "https://www.googleapis.com/auth/admin.directory.domain.readonly"
ORGUNIT_SCOPE = "https://www.googleapis.com/auth/admin.directory.orgunit.readonly"


def _delegation_fix(client_id: str, scopes: list[str]) -> str:
    return (f"in the Admin console (Security > API controls > Domain-wide delegation), give client ID {client_id} "
            f"the scope{'s' if len(scopes) > 1 else ''} {', '.join(scopes)}")


def probe(cfg, found: Findings) -> None:
    from connectors.google import _TokenRequest, build, scopes_for
    from connectors.http import build_session

    settings = cfg.google
    connector = build(cfg, dry_run=True)
    credentials = connector.session.credentials
    caps = found.capabilities
    caps["api_base_url"], caps["admin"], caps["customer"] = settings.api_base_url, settings.admin_email, settings.customer
    caps["service_account"] = getattr(credentials, "service_account_email", None)
    caps["tls"], insecure = tls_of(settings.api_base_url, settings)
    if insecure:
        found.warn(*insecure)
    token_request = _TokenRequest(build_session(settings))
    client_id = _client_id(settings)
    granted, refused = [], []
    wanted = [*scopes_for(settings), DOMAIN_SCOPE] + ([ORGUNIT_SCOPE] if settings.org_unit else [])
    for scope in wanted:
        try:
            credentials.with_scopes([scope]).refresh(token_request)
            granted.append(scope)
        except google.auth.exceptions.RefreshError as exc:
            detail = _detail(exc)
            if "unauthorized_client" in detail:
                refused.append(scope)
                continue
            caps["token"] = False
            found.error(f"the token endpoint refused the service account for admin {settings.admin_email}: {detail}",
                        "set google.admin_email to a super admin of the Workspace, and check the key is the service "
                        "account's current one (not deleted or rotated)")
            return
        except (google.auth.exceptions.TransportError, TransientError) as exc:
            problem = network_problem(exc, "token endpoint", "google", settings.timeout)
            found.error(*(problem or (f"token endpoint: {exc}", "try again later")))
            return
    caps["token"] = True
    caps["scopes_granted"], caps["scopes_refused"] = granted, refused
    user_scope, group_scope = scopes_for(settings)[:2]
    licensing = [s for s in scopes_for(settings)[2:] if s in refused]
    if licensing:
        found.error(f"the service account is not delegated {licensing[0]}: google.licences needs it to assign "
                    f"licences, and the connector asks for it, so no token is issued",
                    _delegation_fix(client_id, licensing))
    if user_scope in refused:
        found.error(f"the service account is not delegated {user_scope}", _delegation_fix(client_id, [user_scope]))
    if group_scope in refused:
        found.error(
            f"the service account is not delegated {group_scope}: the connector asks for it, so no token is issued",
            _delegation_fix(client_id, [group_scope]))
    if user_scope in refused or group_scope in refused or licensing:
        return
    try:  # the connector's own token, really used
        connector._request("GET", "users", params={"customer": settings.customer, "maxResults": 1})
        caps["authenticated"] = True
    except AuthFailed as exc:
        caps["authenticated"] = False
        found.error(f"a token was issued but the Directory API refused it: {exc}",
                    f"make {settings.admin_email} a super admin (or give it the User Management admin role)")
        return
    except ConnectorError as exc:
        problem = network_problem(exc, f"GET {settings.api_base_url}", "google", settings.timeout)
        found.error(*(problem or (f"users.list: {exc}", "check google.customer and google.api_base_url")))
        return
    _domains(cfg, credentials, token_request, found, DOMAIN_SCOPE in granted, client_id)
    if settings.org_unit:
        _org_units(cfg, credentials, token_request, found, ORGUNIT_SCOPE in granted, client_id)
    if settings.licences:
        _skus(cfg, connector, found)


def _scoped_get(settings, credentials, token_request, scope: str, path: str, params: dict):
    """A GET with a token of `scope` alone: (status, JSON body or None)."""
    from connectors.http import build_session

    scoped = credentials.with_scopes([scope])
    scoped.refresh(token_request)
    response = build_session(settings).get(f"{settings.api_base_url}{path}", params=params, headers={
        "Authorization": f"Bearer {scoped.token}", "Accept": "application/json"}, timeout=settings.timeout)
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, None


def _org_units(cfg, credentials, token_request, found: Findings, allowed: bool, client_id: str) -> None:
    """The org units google.org_unit names must exist in the customer (a user moved to one that does not is refused)."""
    settings, caps = cfg.google, found.capabilities
    configured = settings.org_unit.literal_values()
    if not allowed:
        caps["org_units"] = None
        found.warn("the customer's org units cannot be read, so google.org_unit's paths are not verified",
                   "optional: " + _delegation_fix(client_id, [ORGUNIT_SCOPE]))
        return
    try:
        status, body = _scoped_get(settings, credentials, token_request, ORGUNIT_SCOPE,
                                   f"/admin/directory/v1/customer/{settings.customer}/orgunits", {"type": "all"})
    except (OSError, ConnectorError, google.auth.exceptions.GoogleAuthError):
        status, body = None, None
    if status != 200 or not isinstance(body, dict):
        caps["org_units"] = None
        found.warn(f"the customer's org units could not be read (GET …/customer/{settings.customer}/orgunits: "
                   f"HTTP {status})", "check google.customer")
        return
    paths = {"/"} | {u.get("orgUnitPath") for u in body.get("organizationUnits") or [] if isinstance(u, dict)}
    caps["org_units"] = sorted(p for p in paths if p)
    for value in configured:
        if value not in paths:
            found.error(f"google.org_unit names the org unit {value}, which does not exist in the customer "
                        f"(users placed there would be refused with INVALID_OU_ID)",
                        f"create {value} in the Admin console (Directory > Organizational units), or change the rule")


def _skus(cfg, connector, found: Findings) -> None:
    """Each SKU google.licences names must be one the customer has: one listing of its assignments."""
    caps = found.capabilities
    caps["licences"] = {}
    for grant in cfg.google.licences:
        try:
            connector._licence_call("GET", grant.key, "users", params={
                "customerId": connector._licensing_customer, "maxResults": 1})
            caps["licences"][grant.key] = True
        except ConnectorError as exc:
            caps["licences"][grant.key] = False
            found.error(f"google.licences: product {grant.product} SKU {grant.sku} cannot be read for the customer "
                        f"({exc})", "check the product and SKU ids (Products and SKUs in the Licensing API docs) "
                        "and that the customer has a subscription to it")


def _domains(cfg, credentials, token_request, found: Findings, allowed: bool, client_id: str) -> None:
    settings, caps = cfg.google, found.capabilities
    if not allowed:
        caps["domains"] = None
        found.warn("the customer's domains cannot be read, so the connector's domain is not verified",
                   "optional: " + _delegation_fix(client_id, [DOMAIN_SCOPE]))
        return
    from connectors.http import build_session

    scoped = credentials.with_scopes([DOMAIN_SCOPE])
    scoped.refresh(token_request)
    session = build_session(settings)
    url = f"{settings.api_base_url}/admin/directory/v1/customer/{settings.customer}/domains"
    try:
        response = session.get(url, headers={"Authorization": f"Bearer {scoped.token}", "Accept": "application/json"})
        domains = [d.get("domainName") for d in response.json().get("domains") or []] if response.ok else None
    except (ValueError, OSError):
        domains = None
    caps["domains"] = domains
    if domains is None:
        found.warn(f"the customer's domains could not be read (GET …/customer/{settings.customer}/domains)",
                   "check google.customer")
    elif cfg.domain and cfg.domain.lower() not in {d.lower() for d in domains}:
        found.error(f"domain {cfg.domain} is not one of the customer's domains ({', '.join(domains)})",
                    f"set domain: of connector {cfg.name} to one of them")


def _client_id(settings) -> str:
    """The key's numeric client ID (what domain-wide delegation is granted to; not a secret)."""
    import json

    from models.secrets import resolve

    try:
        return str(json.loads(resolve(settings.service_account_key)).get("client_id") or "?")
    except (ValueError, AttributeError):
        return "?"


def _detail(exc: Exception) -> str:
    from connectors.google import refresh_detail

    return refresh_detail(exc)


def summary(caps: dict[str, Any]) -> list[str]:
    lines = [f"{caps.get('api_base_url')}  TLS: {caps.get('tls')}  admin: {caps.get('admin')}  "
             f"customer: {caps.get('customer')}"]
    if caps.get("token"):
        short = [s.rsplit("/", 1)[-1] for s in caps.get("scopes_granted") or []]
        lines.append(f"scopes granted: {', '.join(short) or 'none'}"
                     + (f"; refused: {', '.join(s.rsplit('/', 1)[-1] for s in caps['scopes_refused'])}"
                        if caps.get("scopes_refused") else ""))
    if caps.get("domains") is not None and "domains" in caps:
        lines.append(f"domains: {', '.join(caps['domains'])}")
    if caps.get("org_units"):
        lines.append(f"org units: {', '.join(caps['org_units'])}")
    if caps.get("licences"):
        lines.append("licences: " + ", ".join(f"{k} {'ok' if ok else 'unknown'}" for k, ok in caps["licences"].items()))
    return lines
