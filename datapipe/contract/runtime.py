"""Starting Ray the same way in every data and caption job.

Inside `ray job submit` (or wherever a cluster is reachable) the driver joins that cluster; an
explicit address joins that one; otherwise the job starts a local instance with `num_cpus`
(never a plain `ray.init()`, which may try to join a dead cluster from a stale temp file).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def init_ray(address: str | None = None, num_cpus: int | None = None, runtime_env: dict | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
        return
    try:
        ray.init(address="auto", runtime_env=runtime_env, log_to_driver=False)
        log.info("joined the running Ray cluster")
    except ConnectionError:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env,
                 log_to_driver=False)
        log.info("started a local Ray instance with %s CPUs", ray.cluster_resources().get("CPU"))
