"""The Google batch wire format: a multipart/mixed body of application/http parts, both ways.

A request part holds one HTTP request (request line, headers, body) and a `Content-ID`; the answer
holds one HTTP response per part, in any order, each under `Content-ID: <response-...>`.
"""

import json
import secrets
from urllib.parse import unquote, urlsplit

MAX_BATCH = 1000
STATUS_TEXT = {200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
               404: "Not Found", 405: "Method Not Allowed", 409: "Conflict", 412: "Precondition Failed",
               413: "Payload Too Large", 500: "Internal Server Error"}


def split_multipart(body: bytes, boundary: str) -> list[tuple[dict, bytes]]:
    """The parts of a multipart body, each as (lower-cased headers, payload)."""
    delimiter = b"--" + boundary.encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk[2:] if chunk.startswith(b"\r\n") else chunk.lstrip(b"\n")
        chunk = chunk[:-2] if chunk.endswith(b"\r\n") else chunk.rstrip(b"\n")
        head, body_ = _split_head(chunk)
        parts.append((_headers(head), body_))
    return parts


def _split_head(message: bytes) -> tuple[bytes, bytes]:
    for sep in (b"\r\n\r\n", b"\n\n"):
        if sep in message:
            head, _, rest = message.partition(sep)
            return head, rest
    return message, b""


def _headers(head: bytes) -> dict:
    headers = {}
    for line in head.decode("latin-1").splitlines():
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


def boundary(content_type: str) -> str | None:
    for piece in content_type.split(";")[1:]:
        key, _, value = piece.strip().partition("=")
        if key.lower() == "boundary":
            return value.strip('"')
    return None


def calls(parts: list[tuple[dict, bytes]]):
    """Each part as (content id, method, path, query, headers, body); method None for a malformed part."""
    for index, (part_headers, payload) in enumerate(parts):
        content_id = part_headers.get("content-id", f"<item{index + 1}>").strip("<>")
        head, inner_body = _split_head(payload)
        lines = head.decode("latin-1").splitlines()
        request_line = lines[0].split() if lines else []
        inner_headers = _headers("\n".join(lines[1:]).encode("latin-1"))
        if len(request_line) < 2:
            yield content_id, None, "", "", inner_headers, inner_body
        else:
            url = urlsplit(request_line[1])
            yield content_id, request_line[0].upper(), unquote(url.path), url.query, inner_headers, inner_body


def encode(answers: list[tuple[str, int, dict | None, list]]) -> tuple[bytes, str]:
    """(content id, status, JSON result, headers) per call as a multipart body and its content type."""
    out_boundary = "batch_" + secrets.token_hex(12)
    chunks = []
    for content_id, status, result, extra in answers:
        inner = b"" if result is None else json.dumps(result).encode()
        head = [f"HTTP/1.1 {status} {STATUS_TEXT.get(status, 'Status')}"]
        if result is not None:
            head += ["Content-Type: application/json; charset=UTF-8", f"Content-Length: {len(inner)}"]
        head += [f"{k}: {v}" for k, v in extra]
        chunks.append(f"--{out_boundary}\r\nContent-Type: application/http\r\n"
                      f"Content-ID: <response-{content_id}>\r\n\r\n".encode()
                      + "\r\n".join(head).encode() + b"\r\n\r\n" + inner + b"\r\n")
    return b"".join(chunks) + f"--{out_boundary}--\r\n".encode(), f"multipart/mixed; boundary={out_boundary}"
