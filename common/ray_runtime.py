"""Starting Ray the same way in every data and caption job.

An explicit `ray.address` joins that cluster; inside `ray job submit` (which hands its entrypoint
RAY_ADDRESS) the driver joins the cluster it was submitted to; otherwise the job starts a local
instance with `num_cpus`. A job never goes looking for a cluster on its own (`address="auto"`):
that reads a temp file some other, possibly dead or unrelated, cluster left behind.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass


log = logging.getLogger(__name__)


@dataclass
class RayConfig:
    """Where a job's Ray runs (every Ray job's `ray` section)."""

    address: str | None = None  # null: join the cluster of a submitted job, else start a local one
    num_cpus: int | None = None  # for a local instance; null = all cores


def init_ray(address: str | None = None, num_cpus: int | None = None, runtime_env: dict | None = None,
             env_vars: dict[str, str] | None = None) -> None:
    """`env_vars` reach every worker: through the job's runtime_env on a cluster, and on a local
    instance by inheritance from this process (there a runtime_env would make Ray start dedicated
    workers rather than use the ones it starts with the instance)."""
    import ray

    if ray.is_initialized():
        return
    joined_env = dict(runtime_env or {})
    if env_vars:
        joined_env["env_vars"] = {**joined_env.get("env_vars", {}), **env_vars}
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, runtime_env=joined_env or None, log_to_driver=False)
        log.info("joined the Ray cluster at %s", address)
        return
    os.environ.update(env_vars or {})
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env,
             log_to_driver=False)
    log.info("started a local Ray instance with %s CPUs", ray.cluster_resources().get("CPU"))
