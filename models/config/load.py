"""Finding, reading and validating the file: its path, YAML errors with line and column, and one
InvalidInput naming every bad field at once."""

import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from models.config.document import Config, cross_problems
from models.validation import InvalidInput, problems_of

DEFAULT_CONFIG_FILE = "outbound.yaml"


def config_path(explicit: str | os.PathLike | None = None) -> Path:
    return Path(explicit or os.environ.get("OUTBOUND_CONFIG") or DEFAULT_CONFIG_FILE)


def parse_config(data: object, source: str = "configuration") -> Config:
    """Validate the configuration; raise InvalidInput naming every mistake at once."""
    cross = cross_problems(data)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        # The model's own cross check only runs when every field is valid: report ours instead.
        fields = [p for p in problems_of(exc) if not p.startswith("(root): ")] if cross else problems_of(exc)
        raise InvalidInput(f"configuration {source}", fields + cross) from None
    return config


def load_config(path: str | os.PathLike | None = None) -> Config:
    """Read and validate the configuration file; raise InvalidInput naming every bad field."""
    path = config_path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidInput(f"configuration {path}", [f"cannot read the file: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise InvalidInput(f"configuration {path}", [f"{where}not valid YAML ({getattr(exc, 'problem', exc)})"]) from None
    if not isinstance(data, dict):
        raise InvalidInput(f"configuration {path}", ["(root): must be a mapping with tenant_domain and connectors"])
    return parse_config(data, str(path))
