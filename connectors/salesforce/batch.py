"""Salesforce batches: sObject Collections, 200 records a request, results aligned with the ops."""

from typing import Any, Optional

from connectors.base import BatchOp
from connectors.errors import AlreadyExists, ConnectorError, NotFound, Rejected
from connectors.salesforce.mapping import created, freed_username, patch_fields, soql_quote
from connectors.salesforce.transport import translate
from connectors.salesforce.users import Users
from models.kinds import Action

_UPDATES = (Action.UPDATE, Action.DISABLE, Action.ENABLE, Action.DELETE)


class Batch(Users):
    def apply_batch(self, ops: list[BatchOp], *, max_workers: int = 1) -> list[Any]:
        """Apply ops through sObject Collections (200 records a request); results align with ops.
        The collections do the parallel work: `max_workers` is not needed here."""
        results: list[Any] = [None] * len(ops)
        creates, updates = [], []
        for i, op in enumerate(ops):
            if op.kind == Action.CREATE:
                creates.append(i)
            elif op.kind in _UPDATES:
                updates.append(i)
            else:
                results[i] = Rejected(f"unknown batch operation {op.kind!r}")
        size = self.capabilities.max_batch
        for start in range(0, len(creates), size):
            self._create_chunk(ops, creates[start:start + size], results)
        for start in range(0, len(updates), size):
            self._update_chunk(ops, updates[start:start + size], results)
        return results

    def _collection(self, what: str, method: str, records: list[dict], todo: list[int],
                    results: list[Any]) -> Optional[list[dict]]:
        """Send one collection; a failure of the whole call is each of its records' result (then None)."""
        try:
            return self._json_call(what, method, "composite/sobjects", {"allOrNone": False, "records": records})
        except ConnectorError as exc:
            for i in todo:
                results[i] = exc
            return None

    def _create_chunk(self, ops: list[BatchOp], idx: list[int], results: list[Any]) -> None:
        fields_by_op = {}
        for i in idx:
            try:
                fields_by_op[i] = self._create_fields(ops[i].account)
            except ConnectorError as exc:
                results[i] = exc
        todo = list(fields_by_op)
        if not todo:
            return
        records = [{"attributes": {"type": "User"}, **fields_by_op[i]} for i in todo]
        answer = self._collection(f"create {len(records)} users", "POST", records, todo, results)
        if answer is None:
            return
        for n, i in enumerate(todo):
            item = answer[n]
            if item.get("success"):
                results[i] = created(ops[i].account, fields_by_op[i], item.get("id"))
            else:
                error = self._item_error(f"create user {ops[i].account.user_name}", item)
                if isinstance(error, AlreadyExists):
                    error = self._username_conflict(ops[i].account.user_name, error)
                results[i] = error

    def _update_chunk(self, ops: list[BatchOp], idx: list[int], results: list[Any]) -> None:
        fields_by_op: dict[int, dict] = {}
        need_names = [ops[i].remote_id for i in idx if ops[i].kind == Action.DELETE
                      and self.settings.free_username_on_deprovision]
        names = {}
        if need_names:
            try:
                names = {r["Id"]: r["Username"] for r in self._query(
                    f"SELECT Id, Username FROM User WHERE Id IN ({', '.join(soql_quote(n) for n in need_names)})")}
            except ConnectorError as exc:
                for i in idx:
                    results[i] = exc
                return
        for i in idx:
            op = ops[i]
            if op.kind == Action.UPDATE:
                fields = patch_fields(op.changes)
            elif op.kind == Action.DELETE:
                fields = {"IsActive": False}
                if op.remote_id in names:
                    freed = freed_username(names[op.remote_id], op.remote_id)
                    if freed != names[op.remote_id]:
                        fields["Username"] = freed
            else:
                fields = {"IsActive": op.kind == Action.ENABLE}
            if fields:
                fields_by_op[i] = fields
        todo = list(fields_by_op)
        if not todo:
            return
        records = [{"attributes": {"type": "User"}, "id": ops[i].remote_id, **fields_by_op[i]} for i in todo]
        answer = self._collection(f"update {len(records)} users", "PATCH", records, todo, results)
        if answer is None:
            return
        updated = []
        for n, i in enumerate(todo):
            item = answer[n]
            if item.get("success"):
                if ops[i].kind == Action.UPDATE:
                    updated.append(i)
            else:
                error = self._item_error(f"{ops[i].kind} user {ops[i].remote_id}", item)
                if isinstance(error, AlreadyExists):
                    error = self._username_conflict(str(fields_by_op[i].get("Username")), error)
                results[i] = error
        if updated:
            # One query re-reads every updated user, so the batch returns what Salesforce holds.
            ids = ", ".join(soql_quote(ops[i].remote_id) for i in updated)
            try:
                accounts = {r["Id"]: self._account(r)
                            for r in self._query(f"SELECT {self._select()} FROM User WHERE Id IN ({ids})")}
            except ConnectorError as exc:
                accounts, missing = {}, exc
            else:
                missing = None
            for i in updated:
                results[i] = accounts.get(ops[i].remote_id) or missing or NotFound(f"user {ops[i].remote_id} vanished")

    def _item_error(self, what: str, item: dict) -> ConnectorError:
        errors = item.get("errors") or [{}]
        first = errors[0]
        code = first.get("statusCode") or first.get("errorCode") or ""
        status = 404 if code in ("NOT_FOUND", "ENTITY_IS_DELETED", "INVALID_CROSS_REFERENCE_KEY") \
            and not first.get("fields") else 400
        return translate(what, status, code, first.get("message") or "", first.get("fields") or [], None)
