"""The Salesforce sandbox's error answers: REST API errors and OAuth token endpoint errors."""

from sandbox.http import HttpError


class SfError(HttpError):
    """A Salesforce error answer: HTTP status and [{"message", "errorCode", "fields"}]."""

    content_type = "application/json;charset=UTF-8"

    def __init__(self, status: int, code: str, message: str, fields: list[str] | None = None):
        item = {"message": message, "errorCode": code, **({"fields": fields} if fields else {})}
        super().__init__(status, [item])
        self.code, self.message, self.fields = code, message, fields or []


class OAuthError(HttpError):
    """An answer of the token endpoint: {"error", "error_description"}."""

    content_type = "application/json;charset=UTF-8"

    def __init__(self, error: str, description: str, status: int = 400):
        super().__init__(status, {"error": error, "error_description": description})
