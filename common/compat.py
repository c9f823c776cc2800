"""Process-wide fixes for the stack, loaded at interpreter start-up before any user code.

scripts/setup.sh writes a `deepfusion-compat.pth` file into the venv that calls `install()`, so
every Python process of the venv gets these fixes: the CLI, pytest, Ray workers, vLLM's engine
processes and DeepSpeed ranks alike. It must stay cheap: it imports nothing heavy at start-up.

What it does:
1. Environment defaults that keep every process offline and quiet (no hub downloads, no
   telemetry, no update checks). `setdefault` only: a user's explicit setting wins.
2. PyPI's torchvision is a CUDA build. Next to the CPU torch its C++ library cannot load, and its
   module-level `register_fake("torchvision::nms")` then fails because the op schema does not
   exist ("operator torchvision::nms does not exist"), which breaks open_clip, timm and
   transformers' Qwen2-VL classes. A meta-path hook runs on the first `import torchvision`: it
   tries to load torchvision's C++ library and, only if that fails, defines the two op schemas
   so the registrations succeed. Transforms and models then work; torchvision's C++ kernels
   (nms, io.decode_*) do not, and deepfusion never calls them. On a machine where torchvision
   matches torch (a CUDA install), the library loads and the hook changes nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from pathlib import Path

from .paths import cache_dir

_ENV_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",  # nothing may download weights at run time
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "NO_ALBUMENTATIONS_UPDATE": "1",  # img2dataset imports albumentations, which phones home
    "WANDB_MODE": "disabled",  # img2dataset imports wandb
    "WANDB_SILENT": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

_TORCHVISION_FALLBACK_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_fallback_library = None  # keeps the torch.library.Library alive for the process lifetime


def _define_missing_torchvision_ops() -> None:
    global _fallback_library
    if _fallback_library is not None:
        return  # already defined (find_spec can be asked for torchvision more than once)
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    import torch  # torchvision imports torch first anyway

    package_dir = Path(next(iter(spec.submodule_search_locations)))
    for library in sorted(package_dir.glob("_C*.so")):
        try:
            torch.ops.load_library(str(library))
            return  # torchvision matches torch: its own library defines the ops
        except (OSError, RuntimeError):
            break
    _fallback_library = torch.library.Library("torchvision", "DEF")
    for schema in _TORCHVISION_FALLBACK_OPS:
        _fallback_library.define(schema)


class _TorchvisionHook(importlib.abc.MetaPathFinder):
    """Runs the fix once, just before torchvision is first imported, then steps aside."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: ARG002
        if fullname != "torchvision":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        _define_missing_torchvision_ops()
        return None  # the normal finders import torchvision itself


def install() -> None:
    """Idempotent; safe to call from anywhere (the .pth file, the CLI, tests)."""
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(cache_dir(create=False) / "torch_extensions"))
    if "torchvision" in sys.modules or any(isinstance(f, _TorchvisionHook) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TorchvisionHook())
