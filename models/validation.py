"""Turn pydantic's errors into one message an operator can act on: each bad field by its path."""

from pydantic import ValidationError


class InvalidInput(ValueError):
    """Input that was refused; `str()` names every bad field and its value."""

    def __init__(self, what: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"invalid {what}:\n" + "\n".join(f"  - {p}" for p in problems))


def field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(root)"


# Fields that hold secrets (or references to them): their values are never echoed back.
SECRET_FIELDS = {"token", "password", "secret", "client_secret", "private_key", "hmac_secret",
                 "webhook_secrets", "security_token", "service_account_key", "api_key"}
# Sections whose wrong values are not echoed either (`auth: "Bearer <token>"`).
NO_ECHO = {"auth"}


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def problems_of(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False):
        # Discriminated unions add the tag to the path (auth.bearer.token): keep the user's path.
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] in ("missing",):
            problems.append(f"{field_path(loc)}: required field is missing")
        elif err["type"] == "extra_forbidden":
            problems.append(f"{field_path(loc)}: unknown field")
        elif any(isinstance(p, str) and p in SECRET_FIELDS | NO_ECHO for p in loc) or isinstance(
                err.get("input"), (dict, list, tuple)):
            # A whole section (or a value under `auth`) may hold a literal secret: name the field only.
            problems.append(f"{field_path(loc)}: {msg}")
        else:
            problems.append(f"{field_path(loc)}: {msg} (got {_short(err.get('input'))})")
    return problems


def invalid(what: str, exc: ValidationError) -> InvalidInput:
    return InvalidInput(what, problems_of(exc))
