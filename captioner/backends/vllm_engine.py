"""Backend 1: the vLLM offline engine (`vllm.LLM`), one per Ray Data actor.

The chat prompt of each slot (the joint question, or one per level) is the same for every image,
so it is rendered once with the model's chat template and every request is that text plus its
image (`multi_modal_data`): the engine batches the whole list in one `generate` call. Guided
decoding (xgrammar) holds the joint answer to the prompt set's JSON schema and a per-level answer
to its word-range regex, with free whitespace between JSON tokens disabled engine-wide (a model
that writes noise would otherwise spend its tokens on blanks). The joint schema is handed to the
engine as the grammar xgrammar converts it to (`PromptSet.json_grammar`: vLLM would convert the
schema again for every request).
"""

from __future__ import annotations

import logging
import os

from common.messages import safe_message

from ..answers import Answer, Request
from ..config import EngineConfig, SamplingConfig
from ..prompts import PromptSet

log = logging.getLogger(__name__)


def engine_env(engine: EngineConfig) -> None:
    """Process settings vLLM reads at start-up (set before `vllm.LLM` is built)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a model is a local folder: never reach a hub
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(engine.kv_cache_gib))  # ignored on GPUs
    # An engine's processes all run on this node (one engine per actor): its message queues use
    # loopback. Unset, vLLM derives the host address by a UDP connect towards 8.8.8.8 and binds them
    # to the machine's outward interface.
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    if engine.num_gpus == 0:
        # Ray sets OMP_NUM_THREADS to an actor's (fractional -> 1) CPU count; the CPU engine would
        # then compute on one thread while the machine has more
        os.environ["OMP_NUM_THREADS"] = str(engine.cpu_threads or os.cpu_count() or 1)


def build_llm(model: str, engine: EngineConfig, seed: int | None = 0):
    engine_env(engine)
    from vllm import LLM

    batched = engine.max_num_batched_tokens
    if batched is None and not engine.enable_chunked_prefill:
        batched = engine.max_model_len  # a whole prompt must fit in one step
    return LLM(
        model=model, dtype=engine.dtype, max_model_len=engine.max_model_len, max_num_seqs=engine.max_num_seqs,
        gpu_memory_utilization=engine.gpu_memory_utilization, tensor_parallel_size=engine.tensor_parallel_size,
        enforce_eager=engine.enforce_eager, limit_mm_per_prompt={"image": 1}, seed=seed or 0,
        enable_chunked_prefill=engine.enable_chunked_prefill, max_num_batched_tokens=batched,
        # no free whitespace between JSON tokens (an engine-wide setting in vLLM 0.32, not per request)
        structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True},
    )


def chat_prompt(tokenizer, prompts: PromptSet, user_text: str) -> str:
    """The model's own chat template around: system prompt, one image, the question."""
    messages = []
    if prompts.system:
        messages.append({"role": "system", "content": prompts.system})
    messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_text}]})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


class VllmGenerate:
    """`Generate` over a local vLLM engine."""

    def __init__(self, llm, prompts: PromptSet, strategy: str, sampling: SamplingConfig):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        self.llm = llm
        self.sampling = sampling
        tokenizer = llm.get_tokenizer()
        self.rendered = {slot: chat_prompt(tokenizer, prompts, text) for slot, text in prompts.prompts(strategy)}
        self.constraints: dict[str, StructuredOutputsParams | None] = {}
        for slot in self.rendered:
            if not sampling.guided:
                self.constraints[slot] = None
            elif slot == "joint":
                self.constraints[slot] = StructuredOutputsParams(grammar=prompts.json_grammar())
            else:
                level = next(lv for lv in prompts.levels if lv.column == slot)
                self.constraints[slot] = StructuredOutputsParams(regex=prompts.level_pattern(level))
        self._params = SamplingParams

    def params(self, req: Request):
        s = self.sampling
        return self._params(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, seed=req.seed,
                            structured_outputs=self.constraints[req.slot])

    def inputs(self, requests: list[Request], images: list) -> list[dict]:
        return [{"prompt": self.rendered[r.slot], "multi_modal_data": {"image": images[r.index]}} for r in requests]

    def __call__(self, requests: list[Request], images: list) -> list[Answer]:
        """Answers in request order. A request the engine refuses (its processor rejects the image,
        the prompt is too long ...) fails alone: the call is split in halves until the refused
        request(s) are found; vLLM refuses at admission, before any generation, so the retries
        cost rendering only."""
        try:
            return self._generate(requests, images)
        except Exception as e:  # noqa: BLE001 - one bad input must not fail the batch (or the actor)
            if len(requests) == 1:
                log.warning("the engine refused request %s/%s: %s", requests[0].index, requests[0].slot,
                            type(e).__name__)
                return [Answer("", "error", error=f"engine_rejected: {safe_message(e)}")]
        half = len(requests) // 2
        return self(requests[:half], images) + self(requests[half:], images)

    def _generate(self, requests: list[Request], images: list) -> list[Answer]:
        outputs = self.llm.generate(self.inputs(requests, images), [self.params(r) for r in requests], use_tqdm=False)
        answers = []
        for out in outputs:
            c = out.outputs[0]
            answers.append(Answer(text=c.text, finish_reason=c.finish_reason or "stop",
                                  prompt_tokens=len(out.prompt_token_ids or []), completion_tokens=len(c.token_ids)))
        return answers
