"""One-time work done at set-up rather than inside the first job: `python -m jobs.prepare`.

scripts/setup.sh runs it after installing the stack, so `make demo` (and the tests) do not pay for
it inside their own time:
  - the embedded text encoder's GGUF weights de-quantised into the cache (~35 s for SmolLM2-135M;
    model/text_encoder.py's resolve_source does it on first use otherwise);
  - DeepSpeed's CPU shared-memory collective op compiled into the cache (~50 s; DeepSpeed JIT-builds
    it the first time a CPU process group starts otherwise).
Each step checks the cache first, so a second run only costs the imports. `--encoders` names the
sources to convert (default: the demo's, `smollm2`); `--no-deepspeed` skips the op.
"""

from __future__ import annotations

import argparse
import logging
import time

log = logging.getLogger("deepfusion.prepare")


def prepare_encoders(sources: list[str]) -> None:
    from model.text_encoder import resolve_source

    for source in sources:
        t0 = time.perf_counter()
        path = resolve_source(source)
        log.info("text encoder %s: %s (%.1f s)", source, path, time.perf_counter() - t0)


def prepare_deepspeed_op() -> None:
    """Build (or load, when it is cached) the op DeepSpeed's CPU backend builds at its first init."""
    from common import compat

    compat.install()  # points TORCH_EXTENSIONS_DIR at the deepfusion cache, as in every job
    from deepspeed.accelerator import get_accelerator

    t0 = time.perf_counter()
    if get_accelerator().device_name() != "cpu":
        log.info("DeepSpeed accelerator is %s: no CPU collective op to build", get_accelerator().device_name())
        return
    from deepspeed.comm.torch import build_shm_op

    op = build_shm_op()
    log.info("DeepSpeed CPU shared-memory op: %s (%.1f s)", "ready" if op is not None else "not supported here",
             time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", default="smollm2", help="comma-separated text encoder sources to convert")
    parser.add_argument("--no-deepspeed", action="store_true", help="do not build DeepSpeed's CPU op")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="prepare: %(message)s")
    prepare_encoders([s for s in args.encoders.split(",") if s])
    if not args.no_deepspeed:
        prepare_deepspeed_op()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
