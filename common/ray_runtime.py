"""Starting Ray the same way in every data and caption job.

An explicit `ray.address` joins that cluster; inside `ray job submit` (which hands its entrypoint
RAY_ADDRESS) the driver joins the cluster it was submitted to; otherwise the job starts a local
instance with `num_cpus`. A job never goes looking for a cluster on its own (`address="auto"`):
that reads a temp file some other, possibly dead or unrelated, cluster left behind.

A local instance registers on 127.0.0.1. Left to itself Ray names a node by the address this
machine routes outward with (it opens a UDP socket towards a public address to find it) and binds
its servers there; `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, Ray's switch for single-machine
instances, makes it use the loopback address instead.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass


log = logging.getLogger(__name__)


@dataclass
class RayConfig:
    """Where a job's Ray runs (every Ray job's `ray` section)."""

    address: str | None = None  # null: join the cluster of a submitted job, else start a local one
    num_cpus: int | None = None  # for a local instance; null = all cores


SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def keep_local_ray_on_loopback() -> None:
    """Before starting a local Ray instance: it and the workers it starts (which inherit this
    process's environment) use 127.0.0.1. Respects a value the user set. Ray reads the switch when
    it is imported, so where it already is, its constant is set to match."""
    os.environ.setdefault(SINGLE_MACHINE_ENV, "0")
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and os.environ[SINGLE_MACHINE_ENV] == "0":
        constants.ENABLE_RAY_CLUSTER = False


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
    keep_local_ray_on_loopback()
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env,
             log_to_driver=False)
    log.info("started a local Ray instance with %s CPUs", ray.cluster_resources().get("CPU"))
