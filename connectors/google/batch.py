"""Google batches: user operations as multipart/mixed batch requests, 1,000 calls each."""

import json
import re
import secrets
from typing import Any, Optional

import requests

from connectors.base import BatchOp
from connectors.errors import ConnectorError, NotFound, Rejected, TransientError
from connectors.google.mapping import needs_current
from connectors.google.transport import API_PATH, body_of, error_for, key
from connectors.google.users import Users
from models.kinds import Action

BATCH_PATH = "/batch/admin/directory_v1"


class Batch(Users):
    def _op_call(self, op: BatchOp, current: Optional[dict] = None) -> tuple[str, str, Optional[dict]]:
        if op.kind == Action.CREATE and op.account is not None:
            return "POST", "users", self._insert_body(op.account)
        if not op.remote_id:
            raise Rejected(f"batch op {op.kind!r} needs a remote_id")
        path = f"users/{key(op.remote_id)}"
        if op.kind == Action.UPDATE:
            current = current or {}
            return "PATCH", path, self._patch_body(op.changes, current.get("externalIds"), current)
        if op.kind in (Action.DISABLE, Action.ENABLE):
            return "PATCH", path, {"suspended": op.kind == Action.DISABLE}
        if op.kind == Action.DELETE:
            return "DELETE", path, None
        raise Rejected(f"unknown batch op {op.kind!r}")

    def apply_batch(self, ops: list[BatchOp], *, max_workers: int = 1) -> list[Any]:
        """Apply user operations through Google's batch endpoint, 1,000 calls per request.

        Results align with `ops`: an Account (create/update), None (done), or the ConnectorError
        that call met (a delete that found nothing is done). Never raises for one op. The batch
        endpoint does the parallel work: `max_workers` is not needed here.
        """
        results: list[Any] = [None] * len(ops)
        current = self._current_users(ops, results)
        calls, where = [], []
        for index, op in enumerate(ops):
            if results[index] is not None:  # its user could not be read
                continue
            try:
                calls.append(self._op_call(op, current.get(index)))
                where.append(index)
            except Rejected as exc:
                results[index] = exc
        for index, answer in zip(where, self._batch_calls(calls)):
            op = ops[index]
            if isinstance(answer, NotFound) and op.kind == Action.DELETE:
                answer = None
            elif isinstance(answer, dict):
                answer = self._account(answer) if op.kind in (Action.CREATE, Action.UPDATE) and answer else None
            results[index] = answer
        return results

    def _current_users(self, ops: list[BatchOp], results: list[Any]) -> dict[int, dict]:
        """The users (as Google holds them) of updates that set one entry of an array, read in one batch;
        a user that cannot be read makes its update fail with that error."""
        need = [i for i, op in enumerate(ops)
                if op.kind == Action.UPDATE and op.remote_id and needs_current(op.changes)]
        if not need:
            return {}
        found = {}
        answers = self._batch_calls([("GET", f"users/{key(ops[i].remote_id)}", None) for i in need])
        for index, answer in zip(need, answers):
            if isinstance(answer, dict):
                found[index] = answer
            else:
                results[index] = answer
        return found

    def _batch_calls(self, calls: list[tuple[str, str, Optional[dict]]]) -> list[Any]:
        """Send calls as batch requests; each answer is the JSON body (dict) or a ConnectorError."""
        answers: list[Any] = []
        size = self.capabilities.max_batch
        for start in range(0, len(calls), size):
            chunk = calls[start:start + size]
            boundary = "batch_" + secrets.token_hex(12)
            try:
                response = self._request("POST", BATCH_PATH, data=_multipart(chunk, boundary), cost=len(chunk),
                                         headers={"Content-Type": f"multipart/mixed; boundary={boundary}"})
            except ConnectorError as exc:
                answers.extend([exc] * len(chunk))
                continue
            answers.extend(_parse_batch(response, chunk))
        return answers


def _multipart(calls: list[tuple[str, str, Optional[dict]]], boundary: str) -> bytes:
    chunks = []
    for index, (method, path, body) in enumerate(calls):
        lines = [f"{method} {API_PATH}{path} HTTP/1.1"]
        payload = b""
        if body is not None:
            payload = json.dumps(body, ensure_ascii=False).encode()
            lines += ["Content-Type: application/json; charset=UTF-8", f"Content-Length: {len(payload)}"]
        chunks.append(f"--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <item{index}>\r\n\r\n".encode()
                      + "\r\n".join(lines).encode() + b"\r\n\r\n" + payload + b"\r\n")
    return b"".join(chunks) + f"--{boundary}--\r\n".encode()


def _parse_batch(response: requests.Response, chunk: list) -> list[Any]:
    """Each call's answer from a multipart/mixed batch response, matched by Content-ID."""
    ctype = response.headers.get("Content-Type", "")
    match = re.search(r'boundary="?([^";]+)"?', ctype)
    missing = TransientError("the batch response holds no answer for this call")
    if not ctype.lower().startswith("multipart/mixed") or not match:
        return [TransientError(f"the batch response is not multipart/mixed ({ctype})")] * len(chunk)
    answers: list[Any] = [missing] * len(chunk)
    delimiter = b"--" + match.group(1).encode()
    for part in response.content.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        head, _, http = part.strip(b"\r\n").partition(b"\r\n\r\n")
        cid = re.search(rb"Content-ID:\s*<response-item(\d+)>", head, re.IGNORECASE)
        if not cid or int(cid.group(1)) >= len(chunk):
            continue
        index = int(cid.group(1))
        status_head, _, payload = http.partition(b"\r\n\r\n")
        lines = status_head.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split()[1])
        except (IndexError, ValueError):
            answers[index] = TransientError("the batch response holds an unreadable answer")
            continue
        headers = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        body = body_of(payload.strip())
        method, path, _ = chunk[index]
        if status >= 400:
            answers[index] = error_for(f"{method} {path} (batch)", status, body, headers)
        else:
            answers[index] = body if isinstance(body, dict) else {}
    return answers
