"""CLI commands: reconcile. Registered on deployments.cli.app when that module loads."""

from deployments.cli import app  # noqa: F401
