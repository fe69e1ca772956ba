"""prune-state: the nightly retention run (the same pruning as `outbound prune`).

The flow only reads the configuration and calls models.retention; it builds no SQL of its own.
"""

from typing import Optional

from prefect import flow, get_run_logger

from models.config import load_config
from models.retention import prune


@flow(name="prune-state", flow_run_name="prune run state (dry_run={dry_run})", retries=0)
def prune_state(config_path: Optional[str] = None, dry_run: bool = False) -> dict:
    """Delete run state older than the configuration's retention, and log the counts."""
    config = load_config(config_path)
    pruned = prune(config.retention, dry_run=dry_run)
    get_run_logger().info("%s", pruned.summary())
    return pruned.as_dict()
