"""Google user aliases: the Directory API's users/{userKey}/aliases, beside the user itself.

An account's aliases travel as the extra attribute `aliases` (canonical text, see
`models.target_rules`), read from the user resource (which lists its editable aliases, so a full
listing costs nothing more) and written after the user's own call:

- create: the user is inserted (with its licences), then each alias added. When one fails the
  account exists without it: the create's result is a `Rejected` naming the user, the alias and the
  account's id, so the operation is recorded failed; the next plan links the account and adds it.
- update of `aliases`: the user's aliases are read (GET .../aliases), the missing ones added
  (POST), the ones no longer wanted removed (DELETE; 404, gone already, is fine). With
  `google.aliases` configured every editable alias of a managed user is ours: one added by hand
  is drift, and removed.

    400 (a domain the customer does not have), 409 (the address is another user's or group's)
        -> Rejected naming the alias
"""

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Optional
from urllib.parse import quote

from connectors.base import Account, BatchOp
from connectors.errors import AlreadyExists, ConnectorError, DryRunRejected, NotFound, Rejected, TransientError
from connectors.google.licences import Licensed
from connectors.google.transport import key
from models.kinds import Action
from models.target_rules import ALIASES, set_of, set_text

log = logging.getLogger("connectors.google")
_KEY = f"extra.{ALIASES}"


class Aliased(Licensed):
    """Users with the email aliases `google.aliases` gives them."""

    @property
    def manages_aliases(self) -> bool:
        return ALIASES in self.extra_targets

    def aliases_of(self, user_key: str) -> set[str]:
        """The user's editable aliases, lower-cased."""
        body = self._json(self._request("GET", f"users/{key(user_key)}/aliases"))
        return {str(a["alias"]).lower() for a in body.get("aliases") or [] if isinstance(a, dict) and a.get("alias")}

    def set_aliases(self, user_key: str, want: set[str], held: Optional[set[str]] = None) -> None:
        """Add the wanted aliases the user lacks and remove the others (of `held`, read when not
        given: a new account holds none); raise the first failure, naming every alias not set."""
        held = self.aliases_of(user_key) if held is None else held
        failures: list[tuple[str, str, ConnectorError]] = []
        for alias in sorted(want - held):
            try:
                self._request("POST", f"users/{key(user_key)}/aliases", json_body={"alias": alias})
            except DryRunRejected:
                raise
            except ConnectorError as exc:
                failures.append(("add", alias, exc))
        for alias in sorted(held - want):
            try:
                self._request("DELETE", f"users/{key(user_key)}/aliases/{quote(alias, safe='@')}")
            except NotFound:
                pass  # gone already: what we wanted
            except DryRunRejected:
                raise
            except ConnectorError as exc:
                failures.append(("remove", alias, exc))
        if failures:
            what = "; ".join(f"{verb} alias {alias}: {exc}" for verb, alias, exc in failures)
            first = failures[0][2]
            message = f"user {user_key}: aliases not set ({what})"
            if isinstance(first, TransientError):
                raise TransientError(message, status=first.status, retry_after=first.retry_after,
                                     maybe_applied=False) from first
            # A taken address is this user's failure, not an account to link.
            kind = Rejected if isinstance(first, AlreadyExists) else type(first)
            raise kind(message, status=first.status, field=ALIASES) from first

    def _aliases_after_create(self, account: Account, created: Account) -> Account:
        want = set_of(account.extra.get(ALIASES))
        if not want:
            return created
        try:
            self.set_aliases(created.user_name, want, held=set())
        except DryRunRejected:
            raise
        except ConnectorError as exc:
            # The account exists: a plain failure naming it, so that the next plan links it and adds the alias.
            raise Rejected(f"{exc}; the account was created (id {created.id}) and is retried for its aliases",
                           status=exc.status, field=ALIASES) from exc
        return replace(created, extra={**created.extra, ALIASES: set_text(want)})

    def create_user(self, account: Account) -> Account:
        created = super().create_user(account)
        return self._aliases_after_create(account, created) if self.manages_aliases else created

    def update_user(self, remote_id: str, changes: dict[str, Any], current: Account) -> Account:
        rest = {k: v for k, v in changes.items() if k != _KEY}
        updated = super().update_user(remote_id, rest, current) if rest else current
        if _KEY in changes and self.manages_aliases:
            want = set_of(changes[_KEY])
            self.set_aliases(remote_id, want)
            updated = replace(updated, extra={**updated.extra, ALIASES: set_text(want)})
        return updated

    def apply_batch(self, ops: list[BatchOp], *, max_workers: int = 1) -> list[Any]:
        """The user's batch (with licences), then each op's aliases: added after a create, set by an
        update of `aliases`. An alias failure becomes that op's result."""
        if not self.manages_aliases:
            return super().apply_batch(ops, max_workers=max_workers)
        sent = [replace(op, changes={k: v for k, v in op.changes.items() if k != _KEY})
                if op.kind == Action.UPDATE and _KEY in op.changes else op for op in ops]
        # An update of nothing but aliases has no call of its own before the aliases' calls.
        only = {i for i, op in enumerate(ops) if op.kind == Action.UPDATE and _KEY in op.changes and not sent[i].changes}
        results = iter(super().apply_batch([op for i, op in enumerate(sent) if i not in only], max_workers=max_workers))
        firsts = [None if i in only else next(results) for i in range(len(ops))]

        def aliases(i: int) -> Any:
            op, result = ops[i], firsts[i]
            if isinstance(result, BaseException):
                return result
            try:
                if op.kind == Action.CREATE and isinstance(result, Account):
                    return self._aliases_after_create(op.account, result)
                if op.kind == Action.UPDATE and _KEY in op.changes:
                    want = set_of(op.changes[_KEY])
                    self.set_aliases(op.remote_id, want)
                    account = result if isinstance(result, Account) else super(Aliased, self).get_user(op.remote_id)
                    return replace(account, extra={**account.extra, ALIASES: set_text(want)})
            except ConnectorError as exc:
                return exc
            return result

        # Aliases have no batch endpoint of ours: their calls go `max_workers` at a time.
        with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(ops) or 1))) as pool:
            return list(pool.map(aliases, range(len(ops))))
