"""The ingest lives in models.ingest (the pull-directory flow stores events too); kept for its importers."""

from models.ingest import Accepted, GroupCommit, accept, accept_all, check_against_config  # noqa: F401
