"""The Google sandbox's error answer: {"error": {"code", "message", "errors": [...]}}, as Google sends."""

from sandbox.http import HttpError

JSON = "application/json; charset=UTF-8"


class ApiError(HttpError):
    """An answer in Google's error shape: {"error": {"code", "message", "errors": [...]}}."""

    content_type = JSON

    def __init__(self, code: int, message: str, reason: str = "invalid", domain: str = "global",
                 location: str | None = None, status: str | None = None, headers=()):
        item = {"message": message, "domain": domain, "reason": reason}
        if location:  # Google names the location for parameters and headers, not for body fields
            item.update(locationType="parameter" if location != "Authorization" else "header", location=location)
        body = {"error": {"code": code, "message": message, "errors": [item]}}
        if status:
            body["error"]["status"] = status
        super().__init__(code, body, headers)
        self.code, self.body = code, body


def not_found(key: str) -> ApiError:
    return ApiError(404, f"Resource Not Found: {key}", reason="notFound")
