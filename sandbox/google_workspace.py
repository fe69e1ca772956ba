"""Org units and licences for the Google sandbox: their storage and API handlers, apart from HTTP.

Org units (Directory API `customer/<id>/orgunits`, scope admin.directory.orgunit[.readonly]): the
root `/` always exists; `list` answers `type=all|children|allIncludingParent` under `orgUnitPath`;
`insert` creates one under an existing parent (409 when the path exists). A user inserted or
patched with an `orgUnitPath` that is not an org unit is refused as Google refuses it: 400
`Invalid Input: INVALID_OU_ID`.

Licences (Enterprise License Manager API, `/apps/licensing/v1/product/<p>/sku/<s>/...`, scope
apps.licensing): the customer has the SKUs it was given, each with a number of seats. `insert`
assigns (409 when the user holds it already, 412 `User limit exceeded` when no seat is free, 400
`Invalid Input: skuId` for a SKU the customer does not have, 400 `Invalid Input: userId` for an
unknown user); `get` and `delete` one assignment (404 when there is none); `listForProductAndSku`
and `listForProduct` with `customerId`, paged (maxResults <= 1000). A deleted user's licences are
released.
"""

import secrets
from typing import Callable

from sandbox.paging import page

SCOPE_ORGUNIT = "https://www.googleapis.com/auth/admin.directory.orgunit"
SCOPE_LICENSING = "https://www.googleapis.com/auth/apps.licensing"
LICENSING_PREFIX = "/apps/licensing/v1/"


class OrgUnits:
    """The customer's organizational units, by path."""

    def __init__(self, paths: list[str], api_error: type):
        self._error = api_error
        self._units: dict[str, dict] = {"/": {"name": "/", "orgUnitPath": "/", "orgUnitId": "id:root",
                                              "parentOrgUnitPath": None, "parentOrgUnitId": None}}
        for path in paths:
            self.ensure(path)

    def ensure(self, path: str) -> dict:
        """The org unit at `path`, created (with its parents) if missing."""
        path = "/" + path.strip("/")
        if path in self._units:
            return self._units[path]
        parent_path = path.rsplit("/", 1)[0] or "/"
        parent = self.ensure(parent_path)
        unit = {"kind": "admin#directory#orgUnit", "name": path.rsplit("/", 1)[1], "description": "",
                "orgUnitPath": path, "orgUnitId": "id:" + secrets.token_hex(6),
                "parentOrgUnitPath": parent["orgUnitPath"], "parentOrgUnitId": parent["orgUnitId"]}
        self._units[path] = unit
        return unit

    def exists(self, path: object) -> bool:
        return isinstance(path, str) and path in self._units

    def check_user(self, user: dict) -> None:
        """Refuse a user body whose orgUnitPath is not an org unit, as Google does."""
        if "orgUnitPath" in user and not self.exists(user["orgUnitPath"]):
            raise self._error(400, "Invalid Input: INVALID_OU_ID")

    def route(self, method: str, seg: list[str], params: dict, body: dict) -> tuple[int, dict]:
        """customer/<id>/orgunits[/<path>]: list, insert, get."""
        if method == "GET" and len(seg) == 3:
            return 200, self._list(params)
        if method == "POST" and len(seg) == 3:
            return 200, self._insert(body)
        if method == "GET" and len(seg) > 3:
            path = "/" + "/".join(seg[3:]).strip("/")
            if path not in self._units or path == "/":
                raise self._error(404, "Org unit not found", reason="notFound")
            return 200, dict(self._units[path])
        raise self._error(404, "Not Found", reason="notFound")

    def _list(self, params: dict) -> dict:
        base = "/" + params.get("orgUnitPath", "/").strip("/")
        kind = params.get("type", "children")
        if kind not in ("all", "children", "allIncludingParent"):
            raise self._error(400, "Invalid value for: type", location="type")
        if base not in self._units:
            raise self._error(400, "Invalid Input: INVALID_OU_ID", location="orgUnitPath")
        under = [u for p, u in self._units.items() if p != "/" and (base == "/" or p.startswith(base + "/"))]
        if kind == "children":
            under = [u for u in under if u["parentOrgUnitPath"] == base]
        elif kind == "allIncludingParent" and base != "/":
            under = [self._units[base], *under]
        return {"kind": "admin#directory#orgUnits", "etag": f'"{secrets.token_hex(8)}"',
                "organizationUnits": [dict(u) for u in under]}

    def _insert(self, body: dict) -> dict:
        name, parent = body.get("name"), body.get("parentOrgUnitPath") or "/"
        if not isinstance(name, str) or not name.strip() or "/" in name:
            raise self._error(400, "Invalid Input: name")
        if parent not in self._units:
            raise self._error(400, "Invalid Input: INVALID_OU_ID")
        path = (parent.rstrip("/") + "/" + name) if parent != "/" else "/" + name
        if path in self._units:
            raise self._error(409, "Invalid Ou Id", reason="duplicate")
        return dict(self.ensure(path))


class Licensing:
    """The customer's SKUs with their seats, and who holds which."""

    def __init__(self, seats: dict[str, int], api_error: type, user_of: Callable[[str], dict | None],
                 customer_ids: tuple[str, ...]):
        self._error = api_error
        self._user_of = user_of  # a user key (email or id) -> the user, or None
        self._customers = customer_ids
        self.seats = {key: int(n) for key, n in seats.items()}  # "product/sku" -> seats
        self._held: dict[str, set[str]] = {key: set() for key in self.seats}  # "product/sku" -> user ids

    def holders(self, key: str) -> set[str]:
        return set(self._held.get(key, ()))

    def release(self, user_id: str) -> None:
        for held in self._held.values():
            held.discard(user_id)

    def route(self, method: str, seg: list[str], params: dict, body: dict) -> tuple[int, dict | None]:
        # product/<p>/sku/<s>/user[/<userId>] | product/<p>/sku/<s>/users | product/<p>/users
        if len(seg) < 3 or seg[0] != "product":
            raise self._error(404, "Not Found", reason="notFound")
        product = seg[1]
        if len(seg) == 3 and seg[2] == "users" and method == "GET":
            keys = [k for k in self.seats if k.split("/", 1)[0] == product]
            if not keys:
                raise self._error(400, "Invalid Input: productId", location="productId")
            return 200, self._list(keys, params)
        if len(seg) < 5 or seg[2] != "sku":
            raise self._error(404, "Not Found", reason="notFound")
        key = f"{product}/{seg[3]}"
        if key not in self.seats:
            raise self._error(400, "Invalid Input: skuId", location="skuId")
        if seg[4] == "users" and len(seg) == 5 and method == "GET":
            return 200, self._list([key], params)
        if seg[4] == "user" and len(seg) == 5 and method == "POST":
            return 200, self._insert(key, body.get("userId"))
        if seg[4] == "user" and len(seg) == 6:
            user = self._user_of(seg[5])
            if user is None or user["id"] not in self._held[key]:
                raise self._error(404, "User does not have a license for specified sku and product",
                                  reason="notFound")
            if method == "GET":
                return 200, self._assignment(key, user)
            if method == "DELETE":
                self._held[key].discard(user["id"])
                return 204, None
        raise self._error(404, "Not Found", reason="notFound")

    def _assignment(self, key: str, user: dict) -> dict:
        product, sku = key.split("/", 1)
        return {"kind": "licensing#licenseAssignment", "etags": f'"{secrets.token_hex(8)}"', "productId": product,
                "skuId": sku, "userId": user["primaryEmail"], "productName": product, "skuName": sku,
                "selfLink": f"{LICENSING_PREFIX}product/{product}/sku/{sku}/user/{user['primaryEmail']}"}

    def _insert(self, key: str, user_key: object) -> dict:
        user = self._user_of(user_key) if isinstance(user_key, str) and user_key else None
        if user is None:
            raise self._error(400, "Invalid Input: userId", location="userId")
        held = self._held[key]
        if user["id"] in held:
            raise self._error(409, "User already has a license for the specified product and SKU",
                              reason="duplicate")
        if len(held) >= self.seats[key]:
            raise self._error(412, f"User limit exceeded: no licence of SKU {key.split('/', 1)[1]} is left "
                                   f"({self.seats[key]} seats)", reason="conditionNotMet")
        held.add(user["id"])
        return self._assignment(key, user)

    def _list(self, keys: list[str], params: dict) -> dict:
        if params.get("customerId") not in self._customers:
            raise self._error(400, "Invalid Input: customerId", location="customerId")
        items = []
        for key in keys:
            for user_id in sorted(self._held[key]):
                user = self._user_of(user_id)
                if user is not None:
                    items.append(self._assignment(key, user))
        items, token = page(items, params, 1000, 100, self._error)
        out = {"kind": "licensing#licenseAssignmentList", "etag": f'"{secrets.token_hex(8)}"', "items": items}
        if token:
            out["nextPageToken"] = token
        return out
