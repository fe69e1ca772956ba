"""SCIM batches: /Bulk (RFC 7644 §3.7) sized to the server's limits, else one call per op over a pool."""

import json
import logging
from typing import Any, Optional
from urllib.parse import urlsplit

from connectors.base import Account, BatchOp
from connectors.errors import ConnectorError, NotFound, OutcomeUnknown, Rejected, retry_after_seconds
from connectors.scim2.mapping import patch_body
from connectors.scim2.transport import scim_error
from connectors.scim2.users import Users
from models.kinds import Action

log = logging.getLogger("connectors.scim2")
BULK_REQUEST = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"


def _json_size(value: Any) -> int:
    """Bytes of `value` as _request sends it."""
    return len(json.dumps(value, ensure_ascii=False).encode())


_ENVELOPE_BYTES = _json_size({"schemas": [BULK_REQUEST], "Operations": []})


class Batch(Users):
    def bulk_limits(self) -> Optional[tuple[int, int]]:
        """(maxOperations, maxPayloadSize) when the server supports /Bulk, else None.

        The payload size is lowered to what a 413 has taught us (a proxy may cap bodies below what
        the ServiceProviderConfig advertises).
        """
        bulk = self.service_provider_config().get("bulk") or {}
        if not bulk.get("supported") or not (bulk.get("maxOperations") or 0) > 0:
            return None
        max_bytes = int(bulk.get("maxPayloadSize") or 1_048_576)
        if self._payload_cap is not None:
            max_bytes = min(max_bytes, self._payload_cap)
        return int(bulk["maxOperations"]), max_bytes

    def apply_batch(self, ops: list[BatchOp], *, max_workers: int = 1) -> list[Any]:
        """Apply user operations through /Bulk when the server has it, else one call each over a thread pool.

        Requests are sized to the server's bulk.maxOperations and bulk.maxPayloadSize; one refused
        with 413 is split in two and sent again; an operation too large for any bulk request goes on
        its own. Results align with `ops`: an Account (create/update), None (done), or the
        ConnectorError that call met (a delete that found nothing is done; an operation the server
        did not answer is OutcomeUnknown). Never raises for one op.
        """
        limits = self.bulk_limits()
        if limits is None or (not self.patch_supported() and any(o.kind != Action.CREATE and o.kind != Action.DELETE
                                                                 for o in ops)):
            return self._one_by_one(ops, max_workers)
        max_ops = limits[0]
        results: list[Any] = [None] * len(ops)
        alone: list[int] = []
        chunk: list[tuple[int, dict]] = []
        size = _ENVELOPE_BYTES
        for index, op in enumerate(ops):
            try:
                item = self._bulk_item(index, op)
            except ConnectorError as exc:
                results[index] = exc
                continue
            max_bytes = self.bulk_limits()[1]  # re-read: a 413 on an earlier request may have lowered it
            item_size = _json_size(item)
            if _ENVELOPE_BYTES + item_size > max_bytes:
                alone.append(index)
                continue
            if chunk and (len(chunk) >= max_ops or size + 2 + item_size > max_bytes):
                self._send_bulk(ops, chunk, results)
                chunk, size = [], _ENVELOPE_BYTES
            size += item_size + (2 if chunk else 0)  # json.dumps separates list items with ", "
            chunk.append((index, item))
        if chunk:
            self._send_bulk(ops, chunk, results)
        if alone:
            for index, result in zip(alone, self._one_by_one([ops[i] for i in alone], max_workers)):
                results[index] = result
        return results

    def _bulk_item(self, index: int, op: BatchOp) -> dict:
        item: dict[str, Any] = {"bulkId": f"op{index}"}
        if op.kind == Action.CREATE:
            item.update(method="POST", path="/Users", data=self._to_scim(op.account))
        elif op.kind == Action.DELETE:
            item.update(method="DELETE", path=f"/Users/{op.remote_id}")
        elif op.kind in (Action.UPDATE, Action.DISABLE, Action.ENABLE):
            changes = op.changes if op.kind == Action.UPDATE else {"active": op.kind == Action.ENABLE}
            item.update(method="PATCH", path=f"/Users/{op.remote_id}", data=patch_body(changes))
        else:
            raise Rejected(f"unknown batch operation {op.kind!r}")
        return item

    def _send_bulk(self, ops: list[BatchOp], chunk: list[tuple[int, dict]], results: list[Any]) -> None:
        body = {"schemas": [BULK_REQUEST], "Operations": [item for _, item in chunk]}
        try:
            response = self._request("POST", "/Bulk", json_body=body, cut_off_unknown=True)
        except ConnectorError as exc:
            if exc.status == 413:
                self._split_after_413(ops, chunk, results, _json_size(body))
                return
            for index, _ in chunk:  # the whole request failed: so did each of its operations
                results[index] = exc
            return
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        answers = [a for a in self._json(response).get("Operations") or [] if isinstance(a, dict)]
        paired = match_answers([item for _, item in chunk], answers)
        for position, (index, item) in enumerate(chunk):
            op, answer = ops[index], paired.get(position)
            if answer is None:
                results[index] = OutcomeUnknown(f"{item['method']} {item['path']}: no answer in the bulk response; "
                                                f"it may have been applied")
                continue
            try:
                status = int(answer.get("status") or 0)
            except (TypeError, ValueError):
                status = 0
            response_body = answer.get("response") if isinstance(answer.get("response"), dict) else {}
            if not 200 <= status < 600:
                results[index] = OutcomeUnknown(f"{item['method']} {item['path']}: the bulk response gives no "
                                                f"status; it may have been applied")
            elif status >= 400:
                error = scim_error(f"{item['method']} {item['path']}", status, response_body, retry_after)
                results[index] = None if isinstance(error, NotFound) and op.kind == Action.DELETE else error
            elif op.kind == Action.CREATE:
                created = _created_id(answer)
                results[index] = op.account.with_id(created) if created else OutcomeUnknown(
                    "POST /Users: created, but the bulk response gives no location or id")
            else:
                results[index] = None

    def _split_after_413(self, ops: list[BatchOp], chunk: list[tuple[int, dict]], results: list[Any],
                         size: int) -> None:
        """The server refused the request as too large: remember the size, then send it in two halves."""
        self._payload_cap = min(self._payload_cap or size, size - 1)
        log.info("connector=%s bulk request of %d operations (%d bytes) refused with 413; splitting",
                 self.name, len(chunk), size)
        if len(chunk) > 1:
            half = len(chunk) // 2
            self._send_bulk(ops, chunk[:half], results)
            self._send_bulk(ops, chunk[half:], results)
            return
        index = chunk[0][0]  # one operation too large for /Bulk: its own request has no bulk limit
        results[index] = self._one_by_one([ops[index]], 1)[0]

    def _one_by_one(self, ops: list[BatchOp], max_workers: int) -> list[Any]:
        """The fallback without /Bulk: one call per op, at most `max_workers` at a time."""
        from concurrent.futures import ThreadPoolExecutor

        def run(op: BatchOp) -> Any:
            try:
                if op.kind == Action.CREATE:
                    return self.create_user(op.account)
                if op.kind == Action.UPDATE:
                    return self.update_user(op.remote_id, op.changes, op.account or Account(user_name=""))
                if op.kind in (Action.DISABLE, Action.ENABLE):
                    self._set_active(op.remote_id, op.kind == Action.ENABLE)
                elif op.kind == Action.DELETE:
                    try:
                        self.delete_user(op.remote_id)
                    except NotFound:
                        pass
                else:
                    raise Rejected(f"unknown batch operation {op.kind!r}")
                return None
            except ConnectorError as exc:
                return exc

        if max_workers <= 1:
            return [run(op) for op in ops]
        with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"scim-{self.name}") as pool:
            return list(pool.map(run, ops))


def _resource_path(reference: Any) -> Optional[str]:
    """`/<Type>/<id>` of a resource URL or path (the last two segments), so a location matches a path."""
    if not isinstance(reference, str) or not reference:
        return None
    parts = [p for p in urlsplit(reference).path.split("/") if p]
    return "/" + "/".join(parts[-2:]) if len(parts) >= 2 else None


def _consistent(item: dict, answer: dict) -> bool:
    """Whether `answer` may be the answer to `item` (what it says, when it says it, agrees)."""
    method = answer.get("method")
    if method and str(method).upper() != item["method"]:
        return False
    if answer.get("bulkId") and answer["bulkId"] != item["bulkId"]:
        return False
    where = _resource_path(answer.get("location"))
    return not (where and item["method"] != "POST" and where != _resource_path(item["path"]))


def match_answers(items: list[dict], answers: list[dict]) -> dict[int, dict]:
    """Pair bulk request operations (by position) with BulkResponse operations (RFC 7644 §3.7.3).

    By bulkId when the answer has one; else by method and location (the resource path), for
    operations other than POST, in request order; else by position, when the server answered every
    operation and the answer at that position agrees with the operation. An operation left unpaired
    got no answer.
    """
    paired: dict[int, dict] = {}
    by_id = {item["bulkId"]: k for k, item in enumerate(items)}
    rest = []
    for a, answer in enumerate(answers):
        bulk_id = answer.get("bulkId")
        k = by_id.get(bulk_id) if isinstance(bulk_id, str) else None
        if k is not None and k not in paired:
            paired[k] = answer
        else:
            rest.append((a, answer))
    left = []
    for a, answer in rest:
        method, where = str(answer.get("method") or "").upper(), _resource_path(answer.get("location"))
        k = None
        if where and not answer.get("bulkId"):
            k = next((k for k, item in enumerate(items) if k not in paired and item["method"] != "POST"
                      and item["method"] == method and _resource_path(item["path"]) == where), None)
        if k is not None:
            paired[k] = answer
        else:
            left.append((a, answer))
    if len(answers) == len(items):
        for a, answer in left:
            if a not in paired and _consistent(items[a], answer):
                paired[a] = answer
    return paired


def _created_id(answer: dict) -> Optional[str]:
    """The id of the resource a POST answer created: the last segment of its location, else the body's id."""
    location = answer.get("location")
    found = location.rstrip("/").rsplit("/", 1)[-1] if isinstance(location, str) else None
    response = answer.get("response")
    fallback = response.get("id") if isinstance(response, dict) else None
    return found or (fallback if isinstance(fallback, str) and fallback else None)
