"""pull-directory: read `sources.ldap` and store what changed as identity events (tasks.pull).

A pull that refuses entries, or that the deletion guard stops, ends Failed (the events of the
entries it accepted are stored; the watermark is not moved), so the Prefect UI tells the truth.
"""

from typing import Optional

from prefect import flow, get_run_logger

from models.config import load_config
from tasks.pull import pull


def _run_name() -> str:
    from prefect.runtime import flow_run

    return "full pull" if flow_run.parameters.get("full") else "pull"


@flow(name="pull-directory", flow_run_name=_run_name, retries=0)
def pull_directory(full: bool = False, max_deletions: Optional[int] = None, config_path: Optional[str] = None) -> dict:
    """One pull of the directory: incremental since the watermark, or full (first run, asked, or the
    watermark unusable). Raises (a Failed run) when an entry is refused or the guard stops it."""
    logger = get_run_logger()
    config = load_config(config_path)
    if config.sources.ldap is None:  # the deployment is scheduled for everyone; without a directory it idles
        logger.info("sources.ldap is not configured: nothing to pull")
        return {"directory": None, "skipped": "sources.ldap is not configured"}
    result = pull(config, full=full, max_deletions=max_deletions, log=logger.warning)
    logger.info("%s", result.summary())
    return result.as_dict()
