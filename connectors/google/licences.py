"""Google Workspace licences: the Enterprise License Manager API, beside the Directory API's users.

The SKUs named in `google.licences` are the ones we manage; a user's licences of other SKUs are
left alone. An account's licences travel as the extra attribute `licences` (canonical text, see
`models.target_rules`), read from the Licensing API (one listing per SKU for a full listing, one
lookup per SKU for one user) and written after the Directory API's call:

- create: the user is inserted, then each licence it should hold assigned. When an assignment
  fails the account exists without it: the create's result is a `Rejected` naming the user, the
  account's id and the licence, so the operation is recorded failed (not retried blindly in the
  run); the next plan finds the account by its externalId, links it, and assigns the licence.
- update of `licences`: each wanted licence assigned (409, held already, is fine), each managed
  licence not wanted revoked (404, not held, is fine): idempotent without reading first.
- disable (suspend): the managed licences are revoked, so a suspended account holds no seat;
  delete releases them in Google itself.

    412 (no seat left), 400 (a SKU the customer does not have) -> Rejected naming the SKU
"""

import logging
from dataclasses import replace
from typing import Any, Iterator, Optional
from urllib.parse import quote

from connectors.base import Account, BatchOp
from connectors.errors import AlreadyExists, ConnectorError, DryRunRejected, NotFound, Rejected, TransientError
from connectors.google.groups import Groups
from models.kinds import Action
from models.target_rules import LICENCES, set_of, set_text

log = logging.getLogger("connectors.google")
LICENSING_PATH = "/apps/licensing/v1/product/"


class Licensed(Groups):
    """Users with the licences `google.licences` grants them."""

    @property
    def skus(self) -> tuple[str, ...]:
        """The managed licences, "product/sku"."""
        return tuple(g.key for g in self.settings.licences)

    @property
    def _licensing_customer(self) -> str:
        # The Licensing API knows a customer by its id or primary domain, not as my_customer.
        return self.settings.customer if self.settings.customer != "my_customer" else self.domain

    def _licence_call(self, method: str, sku_key: str, tail: str, **kwargs):
        product, sku = sku_key.split("/", 1)
        path = f"{LICENSING_PATH}{quote(product, safe='')}/sku/{quote(sku, safe='')}/{tail}"
        try:
            return self._request(method, path, base=self.settings.licensing_url, **kwargs)
        except ConnectorError as exc:
            if exc.status == 412 or (exc.status == 400 and isinstance(exc, Rejected)):
                raise Rejected(f"licence {sku_key}: {exc}", status=exc.status, field="licences") from exc
            raise

    # --- reading ----------------------------------------------------------------------------

    def _held(self, email: str) -> set[str]:
        held = set()
        for sku_key in self.skus:
            try:
                self._licence_call("GET", sku_key, f"user/{quote(email, safe='@')}")
                held.add(sku_key)
            except NotFound:
                pass
            except Rejected as exc:  # a SKU the customer lacks is held by nobody; assigning it names it
                log.warning("google: %s connector=%s", exc, self.name)
        return held

    def _all_held(self) -> dict[str, set[str]]:
        """Lower-cased primary address -> the managed licences it holds, one paged listing per SKU."""
        out: dict[str, set[str]] = {}
        for sku_key in self.skus:
            params = {"customerId": self._licensing_customer, "maxResults": 1000}
            while True:
                try:
                    body = self._json(self._licence_call("GET", sku_key, "users", params=params))
                except Rejected as exc:  # as in _held: the plan proceeds, each assignment fails naming it
                    log.warning("google: %s connector=%s", exc, self.name)
                    break
                for item in body.get("items") or []:
                    out.setdefault(str(item.get("userId", "")).lower(), set()).add(sku_key)
                if not body.get("nextPageToken"):
                    break
                params = {**params, "pageToken": body["nextPageToken"]}
        return out

    def _with(self, account: Optional[Account], held: Optional[set[str]] = None) -> Optional[Account]:
        if account is None or not self.skus:
            return account
        held = self._held(account.user_name) if held is None else held
        return replace(account, extra={**account.extra, LICENCES: set_text(held)})

    def get_user(self, remote_id: str) -> Account:
        return self._with(super().get_user(remote_id))

    def find_user(self, *, external_id: Optional[str] = None, user_name: Optional[str] = None,
                  email: Optional[str] = None) -> Optional[Account]:
        return self._with(super().find_user(external_id=external_id, user_name=user_name, email=email))

    def iter_users(self) -> Iterator[Account]:
        if not self.skus:
            yield from super().iter_users()
            return
        held = self._all_held()
        for account in super().iter_users():
            yield self._with(account, held.get(account.user_name.lower(), set()))

    # --- writing ----------------------------------------------------------------------------

    def set_licences(self, email: str, want: set[str], held: Optional[set[str]] = None) -> None:
        """Assign the wanted managed licences and revoke the others (of `held`, when known: a new
        account holds none); raise the first failure, naming every licence that could not be set."""
        failures: list[tuple[str, ConnectorError]] = []
        for sku_key in self.skus:
            if sku_key not in want and held is not None and sku_key not in held:
                continue
            try:
                if sku_key in want:
                    self._licence_call("POST", sku_key, "user", json_body={"userId": email})
                else:
                    self._licence_call("DELETE", sku_key, f"user/{quote(email, safe='@')}")
            except (AlreadyExists, NotFound):
                pass  # held already / not held: what we wanted
            except DryRunRejected:
                raise
            except ConnectorError as exc:
                failures.append((sku_key, exc))
        if failures:
            what = "; ".join(f"{'assign' if k in want else 'revoke'} {k}: {e}" for k, e in failures)
            first = failures[0][1]
            message = f"user {email}: licences not set ({what})"
            if isinstance(first, TransientError):
                raise TransientError(message, status=first.status, retry_after=first.retry_after,
                                     maybe_applied=False) from first
            raise type(first)(message, status=first.status, field="licences") from first

    def _after_create(self, account: Account, created: Account) -> Account:
        want = set_of(account.extra.get(LICENCES)) if self.skus else set()
        if not want:
            return self._with(created, set()) if self.skus else created
        try:
            self.set_licences(created.user_name, want, held=set())
        except DryRunRejected:
            raise
        except ConnectorError as exc:
            # The account exists: a plain failure (not a transient one to resend the create for) that
            # names it, so that the next plan links the account and assigns the licence.
            raise Rejected(f"{exc}; the account was created (id {created.id}) and is retried for its licences",
                           status=exc.status, field="licences") from exc
        return self._with(created, want)

    def create_user(self, account: Account) -> Account:
        return self._after_create(account, super().create_user(account))

    def update_user(self, remote_id: str, changes: dict[str, Any], current: Account) -> Account:
        key = f"extra.{LICENCES}"
        rest = {k: v for k, v in changes.items() if k != key}
        updated = super().update_user(remote_id, rest, current) if rest else current
        if key in changes and self.skus:
            want = set_of(changes[key])
            self.set_licences(updated.user_name, want)
            updated = replace(updated, extra={**updated.extra, LICENCES: set_text(want)})
        return updated

    def disable_user(self, remote_id: str) -> None:
        """Suspend the user and revoke the managed licences (a suspended user keeps no seat)."""
        super().disable_user(remote_id)
        if self.skus:
            self.set_licences(super().get_user(remote_id).user_name, set())

    def apply_batch(self, ops: list[BatchOp], *, max_workers: int = 1) -> list[Any]:
        """The Directory API's batch, then each op's licences: assigned after a create, set by an
        update of `licences`, revoked after a disable. A licence failure becomes that op's result."""
        if not self.skus:
            return super().apply_batch(ops, max_workers=max_workers)
        key = f"extra.{LICENCES}"
        sent = [replace(op, changes={k: v for k, v in op.changes.items() if k != key})
                if op.kind == Action.UPDATE and key in op.changes else op for op in ops]
        # An update of nothing but licences has no Directory call: it is read instead (for its account).
        only = {i for i, op in enumerate(ops) if op.kind == Action.UPDATE and key in op.changes and not sent[i].changes}
        results = super().apply_batch([op for i, op in enumerate(sent) if i not in only], max_workers=max_workers)
        results = iter(results)
        firsts = [None if i in only else next(results) for i in range(len(ops))]

        def licences(i: int) -> Any:
            if isinstance(firsts[i], BaseException):
                return firsts[i]
            try:
                return self._licences_of_op(ops[i], firsts[i])
            except ConnectorError as exc:
                return exc

        # The Licensing API has no batch endpoint of ours: its calls go `max_workers` at a time.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(ops) or 1))) as pool:
            return list(pool.map(licences, range(len(ops))))

    def _licences_of_op(self, op: BatchOp, result: Any) -> Any:
        key = f"extra.{LICENCES}"
        if op.kind == Action.CREATE and isinstance(result, Account):
            return self._after_create(op.account, result)
        if op.kind == Action.UPDATE and key in op.changes:
            account = result if isinstance(result, Account) else super().get_user(op.remote_id)
            want = set_of(op.changes[key])
            self.set_licences(account.user_name, want)
            return replace(account, extra={**account.extra, LICENCES: set_text(want)})
        if op.kind == Action.DISABLE:
            self.set_licences(super().get_user(op.remote_id).user_name, set())
        return result
