"""Starting Ray the same way in every data and caption job.

Inside `ray job submit` (or wherever a cluster is reachable) the driver joins that cluster; an
explicit address joins that one; otherwise the job starts a local instance with `num_cpus`
(never a plain `ray.init()`, which may try to join a dead cluster from a stale temp file).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


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
    if address:
        ray.init(address=address, runtime_env=joined_env or None, log_to_driver=False)
        return
    try:
        ray.init(address="auto", runtime_env=joined_env or None, log_to_driver=False)
        log.info("joined the running Ray cluster")
    except ConnectionError:
        os.environ.update(env_vars or {})
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env,
                 log_to_driver=False)
        log.info("started a local Ray instance with %s CPUs", ray.cluster_resources().get("CPU"))
