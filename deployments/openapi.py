"""The event API's OpenAPI description: the response models, the problem answers each route
documents, the security schemes, and the IdentityEvent request schema put into the document.

The models are also what the routes answer with, so the document cannot drift from the answers.
"""

from datetime import datetime
from typing import Literal, Optional

from fastapi import FastAPI
from pydantic import BaseModel

from deployments import webhooks
from models.events import IdentityEvent


# --- response models (they make the OpenAPI document) ----------------------------------------

class EventAccepted(BaseModel):
    id: str
    status: str
    duplicate: bool = False


class ConnectorOutcome(BaseModel):
    connector: str
    action: str
    operation: str
    status: str
    remote_id: Optional[str] = None
    remote_name: Optional[str] = None
    reason: str = ""
    error: Optional[str] = None


class EventStatus(BaseModel):
    id: str
    type: str
    trigger: str
    status: str
    received_at: datetime
    finished_at: Optional[datetime] = None
    error: Optional[str] = None
    outcomes: list[ConnectorOutcome]


class Health(BaseModel):
    status: str
    store: Literal["up", "down"]


class Problem(BaseModel):
    error: str
    problems: list[str] = []
    fields: list[str] = []


RETRY_AFTER_HEADER = {"Retry-After": {"description": "Seconds to wait before sending again",
                                      "schema": {"type": "integer"}}}
PROBLEM_DESCRIPTIONS = {
    401: "Missing, expired or wrong webhook signature, or wrong bearer token; nothing stored",
    404: "No event with this id",
    413: "The body is larger than api.max_body_bytes; nothing stored",
    422: "Not JSON, or bad fields (each named); nothing stored",
    503: "The state store is unreachable; nothing stored (or not known to be): send it again after Retry-After",
}
# Either a bearer token, or the three Standard Webhooks headers together.
SECURITY = [{"bearerToken": []}, {"webhookId": [], "webhookTimestamp": [], "webhookSignature": []}]
SECURITY_SCHEMES = {
    "bearerToken": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <api.token>"},
    "webhookId": {"type": "apiKey", "in": "header", "name": webhooks.ID_HEADER,
                  "description": "A unique message id chosen by the sender"},
    "webhookTimestamp": {"type": "apiKey", "in": "header", "name": webhooks.TIMESTAMP_HEADER,
                         "description": "Seconds since the epoch; refused more than 5 minutes away"},
    "webhookSignature": {"type": "apiKey", "in": "header", "name": webhooks.SIGNATURE_HEADER,
                         "description": "v1,<base64 HMAC-SHA256 of 'id.timestamp.payload'>, space-separated"},
}


def PROBLEMS(*codes: int) -> dict:  # noqa: N802 - reads as a declaration in the route decorators
    out = {}
    for code in codes:
        out[code] = {"model": Problem, "description": PROBLEM_DESCRIPTIONS[code]}
        if code == 503:
            out[code]["headers"] = RETRY_AFTER_HEADER
    return out

def describe(app: FastAPI) -> None:
    """Make `app`'s OpenAPI document carry the IdentityEvent schema and the security schemes (built once)."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            event_schema = IdentityEvent.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(event_schema.pop("$defs", {}))
            components["IdentityEvent"] = event_schema
            schema["components"]["securitySchemes"] = SECURITY_SCHEMES
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
