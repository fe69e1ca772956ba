"""Secret references (`env:NAME`, `file:PATH`, `prefect-secret:BLOCK`), resolved only when used.

A configuration file holds references, never values, so that the file itself can be shared,
logged and checked into a repository. `SecretRef.__repr__` never shows a resolved value.
"""

import os
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator

from models.errors import SecretError

SCHEMES = ("env:", "file:", "prefect-secret:")


def _check(ref: str) -> str:
    if not ref.startswith(SCHEMES) or ref.split(":", 1)[1] == "":
        raise ValueError("must be a secret reference: env:NAME, file:PATH or prefect-secret:BLOCK")
    return ref


SecretRef = Annotated[str, AfterValidator(_check)]


def resolve(ref: str) -> str:
    """Return the secret a reference points at."""
    scheme, _, target = ref.partition(":")
    if scheme == "env":
        value = os.environ.get(target)
        if not value:
            raise SecretError(f"{ref}: environment variable {target} is not set")
        return value
    if scheme == "file":
        try:
            return Path(target).expanduser().read_text().strip()
        except OSError as exc:
            raise SecretError(f"{ref}: cannot read the file ({exc.strerror})") from None
    if scheme == "prefect-secret":
        from prefect.blocks.system import Secret

        try:
            value = Secret.load(target, _sync=True).get()
        except (ValueError, RuntimeError) as exc:
            raise SecretError(f"{ref}: no such Prefect Secret block ({type(exc).__name__})") from None
        return value if isinstance(value, str) else str(value)
    raise SecretError(f"{ref}: unknown secret scheme")
