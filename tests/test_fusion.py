"""How the DiT reads the LLM (issue: the deep-fusion claim, tested properly): layer maps, the LLM's
own keys/values for shared attention, LI-DiT's gated refiner and its instruction, the BOS each
encoder adds, and the two-LLM path from training to sampling on tiny random models."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, deepfusion_cmd, scenes_dataset

from model import DeepFusionDiT, DiTConfig, FrozenTextEncoder, TextEncoderConfig, layer_map
from model.dit import Attention, RefinerBlock, TokenRefiner, apply_rope, grid_positions, rope_angles
from model.presets import get_preset, layers_read
from model.text_encoder import encode_for, text_side
from model.tiny import build_tiny_gemma3


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory):
    return build_tiny_gemma3(tmp_path_factory.mktemp("gemma") / "tiny-gemma3")


# -- layer maps -----------------------------------------------------------------------------------
def test_layer_maps_one_to_one_sparse_last_and_single():
    assert layer_map(30, 30, "deep_fusion") == list(range(1, 31))  # PGv3: block i reads layer i
    assert layer_map(30, 30, "shared_kv") == list(range(1, 31))
    assert layer_map(6, 30, "deep_fusion") == [1, 7, 13, 18, 24, 30]  # the sparse demo map
    assert layer_map(6, 30, "last_layer") == [30] * 6
    assert layer_map(6, 30, "single_layer", text_layer=-3) == [28] * 6  # LI-DiT's layer -3 of 30 (+ embeddings)
    assert layer_map(6, 30, "single_layer", text_layer=12) == [12] * 6
    with pytest.raises(ValueError, match="text_layer"):
        DiTConfig(text_dims=[64], llm_layers=[4], conditioning="single_layer", text_layer=7)


def test_labels_are_printed_from_the_layer_map():
    mirror = get_preset("mirror").dit
    assert mirror.depth == mirror.llm_layers[0] == 30
    words = layers_read(mirror)
    assert words.startswith("one-to-one") and "0->1, 1->2" in words and "29->30" in words
    small = get_preset("small").dit
    assert layers_read(small).startswith(f"{len(set(layer_map(small.depth, 30, 'deep_fusion')))} of 30 layers")
    shared = DiTConfig(text_dims=[64], llm_layers=[4], depth=4, width=64, heads=2, conditioning="shared_kv",
                       llm_kv_heads=[1], llm_head_dims=[32])
    assert "keys/values of decoder layer" in layers_read(shared)
    single = DiTConfig(text_dims=[64], llm_layers=[4], depth=2, conditioning="single_layer", text_layer=-3)
    assert layers_read(single).startswith("one layer (2 of 4)")
    out = subprocess.run(deepfusion_cmd() + ["model", "info", "mirror"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "one-to-one" in out.stdout


# -- shared keys/values (FuseDiT) -------------------------------------------------------------------
def test_kv_states_are_the_llms_own_rotated_keys_and_values(tiny_llm):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    enc = FrozenTextEncoder(TextEncoderConfig(source=str(tiny_llm), max_tokens=16))
    prompts = ["a red circle above a blue square", "two cats"]
    kv = enc(prompts, layers=[1, 3], kind="kv")
    hidden = enc(prompts)  # every hidden state: hidden[j - 1] is decoder layer j's input
    T = hidden.mask.shape[1]
    assert kv.hidden.shape == (2, 2, T, 2 * enc.num_kv_heads * enc.head_dim)
    torch.testing.assert_close(kv.mask, hidden.mask)
    llm = enc.llm.base_model
    positions = torch.arange(T)[None].expand(2, -1)
    for slot, j in enumerate([1, 3]):
        layer = llm.layers[j - 1]
        x = layer.input_layernorm(hidden.hidden[j - 1])
        k = layer.self_attn.k_proj(x).unflatten(-1, (enc.num_kv_heads, enc.head_dim)).transpose(1, 2)
        v = layer.self_attn.v_proj(x).unflatten(-1, (enc.num_kv_heads, enc.head_dim)).transpose(1, 2)
        cos, sin = llm.rotary_emb(x, positions)
        _, k = apply_rotary_pos_emb(k, k, cos, sin)  # the LLM's 1D text positions
        want = torch.cat([k.transpose(1, 2).flatten(2), v.transpose(1, 2).flatten(2)], -1)
        real = hidden.mask[..., None]
        torch.testing.assert_close(kv.hidden[slot] * real, want * real, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="kv states need layers"):
        enc(prompts, layers=[0], kind="kv")


def test_shared_attention_uses_the_llm_keys_as_they_are_and_masks_padding():
    torch.manual_seed(0)
    attn = Attention(64, heads=4, qk_norm=True, text_dim=None, kv_downsample=False, shared_kv_heads=2)
    assert not any("text" in name for name, _ in attn.named_parameters())  # no projection of its own
    x = torch.randn(2, 16, 64)
    text = torch.randn(2, 5, 2 * 2 * 16)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    pos = grid_positions(4, 4)
    rope = {"full": rope_angles(pos, 16, 10000.0)}
    out = attn(x, (4, 4), rope, text, mask)

    # by hand: image q/k/v as usual; text keys/values are the LLM's, head g serving DiT heads 2g, 2g+1
    heads = lambda t: t.unflatten(-1, (4, 16)).transpose(1, 2)  # noqa: E731
    q = apply_rope(attn.q_norm(heads(attn.q(x))), *rope["full"])
    k, v = attn.kv(x).chunk(2, -1)
    k, v = apply_rope(attn.k_norm(heads(k)), *rope["full"]), heads(v)
    tk, tv = text.unflatten(-1, (2, 2, 16)).unbind(2)  # [B, T, kv_heads, d]
    tk, tv = (t.permute(0, 2, 1, 3)[:, [0, 0, 1, 1]] for t in (tk, tv))
    keep = torch.cat([torch.ones(2, 16, dtype=torch.bool), mask], 1)[:, None, None]
    want = F.scaled_dot_product_attention(q, torch.cat([k, tk], 2), torch.cat([v, tv], 2), attn_mask=keep)
    torch.testing.assert_close(out, attn.proj(want.transpose(1, 2).flatten(2)))

    padded = text.clone()
    padded[1, 3:] = 1e3  # what sits under padding is never read
    torch.testing.assert_close(attn(x, (4, 4), rope, padded, mask), out)
    real = text.clone()
    real[1, 1] += 1.0
    assert not torch.allclose(attn(x, (4, 4), rope, real, mask)[1], out[1])
    torch.testing.assert_close(attn(x, (4, 4), rope, real, mask)[0], out[0])


def test_shared_kv_block_i_reads_decoder_layer_map_i():
    cfg = DiTConfig(in_channels=12, patch_size=2, width=64, depth=3, heads=2, text_dims=[64], llm_layers=[4],
                    conditioning="shared_kv", llm_kv_heads=[1], llm_head_dims=[32])
    torch.manual_seed(0)
    model = DeepFusionDiT(dit=cfg.to_dict()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    assert model.layer_index == [1, 3, 4] and model.text_layers == [[1, 3, 4]] and model.text_kind == "kv"
    x, kv = torch.randn(2, 12, 8, 8), torch.randn(3, 2, 6, 64)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False

    def block_outputs(states):
        outs = []
        hooks = [b.register_forward_hook(lambda m, i, o: outs.append(o.detach().clone())) for b in model.blocks]
        model(x, torch.zeros(2), [states], [mask])
        for h in hooks:
            h.remove()
        return outs

    ref = block_outputs(kv)
    for slot in range(3):  # compacted: slot s holds decoder layer text_layers[s]
        moved = kv.clone()
        moved[slot] += 1.0
        first = next(i for i, (a, b) in enumerate(zip(block_outputs(moved), ref)) if not torch.allclose(a, b))
        assert first == slot
    with pytest.raises(ValueError, match="head size"):
        DiTConfig(width=64, heads=2, text_dims=[64], llm_layers=[4], conditioning="shared_kv",
                  llm_kv_heads=[1], llm_head_dims=[16])


# -- LI-DiT's refiner -------------------------------------------------------------------------------
def test_refiner_gates_at_zero_init_reproduce_the_ungated_projection_and_cut_the_instruction():
    cfg = DiTConfig(in_channels=12, width=64, depth=2, heads=2, text_dims=[48], llm_layers=[4],
                    conditioning="refiner", refiner_blocks=2, instruction_spans=[[1, 3]])
    torch.manual_seed(0)
    refiner = DeepFusionDiT(dit=cfg.to_dict()).refiners[0]  # the DiT's own init: gates and modulation zero
    hidden, c = torch.randn(2, 7, 48), torch.randn(2, 64)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    out, out_mask = refiner(hidden, mask, c)
    torch.testing.assert_close(out, refiner.proj(refiner.norm(hidden)))  # every block starts as the identity
    assert out_mask[:, 1:3].sum() == 0 and out_mask[0, [0, 3, 4, 5, 6]].all() and out_mask[1].sum() == 3

    # once the gates open, the instruction's tokens shape the prompt's (read, then cut)
    with torch.no_grad():
        for p in refiner.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    out, _ = refiner(hidden, mask, c)
    other = hidden.clone()
    other[:, 1:3] += 1.0
    changed, _ = refiner(other, mask, c)
    assert not torch.allclose(changed[:, 3:5], out[:, 3:5])


def test_refiner_block_with_open_gates_and_no_modulation_is_a_plain_pre_norm_block():
    torch.manual_seed(0)
    block = RefinerBlock(32, heads=2)
    with torch.no_grad():
        block.adaLN[-1].weight.zero_()
        block.adaLN[-1].bias.copy_(torch.cat([torch.zeros(64), torch.ones(32), torch.zeros(64), torch.ones(32)]))
    x, cond = torch.randn(2, 6, 32), torch.randn(2, 32)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2], dtype=torch.bool)

    def plain(x):  # pre-norm self-attention with QK-norm, then the MLP: no gate, no modulation
        q, k, v = block.qkv(F.layer_norm(x, (32,), eps=1e-6)).chunk(3, -1)
        q, k, v = (t.unflatten(-1, (2, 16)).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(block.q_norm(q), block.k_norm(k), v, attn_mask=mask[:, None, None])
        x = x + block.proj(a.transpose(1, 2).flatten(2))
        return x + block.mlp(F.layer_norm(x, (32,), eps=1e-6))

    torch.testing.assert_close(block(x, mask, cond), plain(x))


def test_the_dit_reads_the_instruction_only_through_the_refiner(tiny_llm):
    enc = FrozenTextEncoder(TextEncoderConfig(source=str(tiny_llm), max_tokens=16, instruction="describe the image:"))
    span = enc.instruction_span
    assert span[1] - span[0] == len(enc.prefix_ids) > 0
    kept = enc(["a red circle"], keep_instruction=True)
    cut = enc(["a red circle"])
    assert kept.mask.shape[1] == cut.mask.shape[1] + len(enc.prefix_ids)
    keep = torch.ones(kept.mask.shape[1], dtype=torch.bool)
    keep[span[0] : span[1]] = False
    torch.testing.assert_close(kept.hidden[:, :, keep], cut.hidden)  # the same prompt states either way

    cfg = DiTConfig(in_channels=12, patch_size=2, width=64, depth=2, heads=2, conditioning="refiner",
                    **text_side([enc], "refiner"))
    assert cfg.instruction_spans == [span]
    dit = DeepFusionDiT(dit=cfg.to_dict())
    assert dit.keeps_instruction and dit.refiners[0].instruction_span == span
    (states,) = encode_for(dit, [enc], ["a red circle"])
    assert states.mask.shape == kept.mask.shape


# -- BOS ------------------------------------------------------------------------------------------
def test_each_encoder_adds_the_bos_its_model_was_trained_with(tiny_llm, tiny_gemma):
    llama = FrozenTextEncoder(TextEncoderConfig(source=str(tiny_llm), max_tokens=16))
    gemma = FrozenTextEncoder(TextEncoderConfig(source=str(tiny_gemma), max_tokens=16))
    assert llama.bos_ids == []  # its tokenizer adds none
    assert gemma.bos_ids == [gemma.tokenizer.bos_token_id]  # Gemma's does
    body, n = gemma._body("a red circle", 16)
    assert body[0] == gemma.tokenizer.bos_token_id and body[-1] == gemma.eos_id and n == len(body)
    assert gemma.token_count("a red circle") == llama.token_count("a red circle") + 1
    forced = FrozenTextEncoder(TextEncoderConfig(source=str(tiny_llm), max_tokens=16, bos="always"))
    assert forced._body("a red circle", 16)[0][0] == forced.tokenizer.bos_token_id
    assert not torch.allclose(forced(["a red circle"]).hidden[:, 0, 1], llama(["a red circle"]).hidden[:, 0, 0])
    never = FrozenTextEncoder(TextEncoderConfig(source=str(tiny_gemma), max_tokens=16, bos="never"))
    assert never.bos_ids == []
    cut = gemma(["one two three four five six seven eight"], max_tokens=4)
    assert cut.mask.sum() == 4 and bool(cut.truncated[0])  # the budget holds BOS + 2 words + EOS


def test_the_embedded_ggufs_say_whether_they_add_bos():
    """The flag `auto` reads: SmolLM2's GGUF adds none (its perplexity is lower without), Gemma's adds one."""
    from model.text_encoder import embedded_smollm2_gguf, gguf_adds_bos

    assert gguf_adds_bos(embedded_smollm2_gguf()) is False


@pytest.mark.slow
def test_embedded_gemma3_encoder_prepends_bos_and_reads_sensibly():
    """The real Gemma-3-270M from its PyPI chunk wheels (assembled and de-quantised once, then cached)."""
    from model.text_encoder import embedded_gemma3_gguf, gguf_adds_bos

    assert gguf_adds_bos(embedded_gemma3_gguf()) is True
    enc = FrozenTextEncoder(TextEncoderConfig(source="gemma3", max_tokens=32))
    assert (enc.num_layers, enc.hidden_size, enc.bos_ids) == (18, 640, [enc.tokenizer.bos_token_id])
    ids = torch.tensor([enc._body("The capital of France is Paris, and the capital of Italy is Rome.", 32)[0]])
    with torch.no_grad():
        loss = enc.llm(input_ids=ids, labels=ids).loss
    assert torch.exp(loss) < 60  # without BOS it degenerates (perplexity in the thousands)
    kv = enc(["a red circle"], layers=[1, 18], kind="kv")
    assert kv.hidden.shape[-1] == 2 * enc.num_kv_heads * enc.head_dim and torch.isfinite(kv.hidden).all()


# -- two LLMs, training to sampling -----------------------------------------------------------------
def run(cmd, timeout=600):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_two_llm_refiner_and_shared_kv_train_and_sample_end_to_end(tmp_path, tiny_llm, tiny_gemma):
    data = scenes_dataset(tmp_path / "data", 16, shard_size=8)
    tiny = str(ROOT / "jobs" / "configs" / "train" / "tiny.yaml")
    base = deepfusion_cmd() + ["train", "--config", tiny, "steps=3", f"data.root={data}",
                               f"model.text_encoder.source={tiny_llm}"]
    two = tmp_path / "two"
    out = run(base + [f"run_dir={two}", "model.dit.conditioning=refiner", "model.text_encoder.instruction=draw this",
                      f"model.text_encoder_2.source={tiny_gemma}"])
    assert out.returncode == 0, out.stderr[-3000:]
    inference = json.loads(next((two / "checkpoints").glob("step_*/inference.json")).read_text())
    assert inference["text_encoder_2"]["source"] == str(tiny_gemma)
    dit = inference["dit"] if "dit" in inference else json.loads(
        next((two / "checkpoints").glob("step_*/ema/config.json")).read_text())["dit"]
    assert dit["text_dims"] == [64, 48] and dit["llm_layers"] == [4, 3] and dit["instruction_spans"][0][1] > 0
    assert dit["instruction_spans"][1][0] == 1  # Gemma's BOS first, then the instruction

    shared = tmp_path / "shared"
    out = run(base[:-1] + [f"model.text_encoder.source={tiny_gemma}", f"run_dir={shared}",
                           "model.dit.conditioning=shared_kv"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "keys/values of decoder layer" in out.stderr + out.stdout

    for run_dir in (two, shared):
        sample = run(deepfusion_cmd() + ["sample", str(run_dir), "prompts=[a red circle]", "seeds=[0]", "steps=4",
                                         f"out={run_dir / 'out'}"])
        assert sample.returncode == 0, sample.stderr[-2000:]
        assert (run_dir / "out" / "000_seed0.png").stat().st_size > 0

    # the study's held-out loss reads both encoders too: the same inputs give the same number
    from jobs.eval_scenes import heldout_loss

    first, again = heldout_loss(two, prompts=8), heldout_loss(two, prompts=8)
    assert first == again and first["prompts"] == 8 and len(first["per_sigma"]) == 7
    assert all(v > 0 and v == v for v in first["per_sigma"].values())
    assert heldout_loss(shared, prompts=8)["loss"] != first["loss"]
    # a single-object study scores colour and shape prompts only: other inputs, another number
    single = heldout_loss(two, prompts=8, categories=("colour", "shape"))
    assert single["prompts"] == 8 and single["loss"] != first["loss"]
    with pytest.raises(ValueError, match="categories"):
        heldout_loss(two, prompts=8, categories=("style",))


def test_kv_states_keep_every_token_on_sliding_window_layers(tmp_path):
    """Gemma's sliding-window layers cache only their window; the shared states still hold every token."""
    small = FrozenTextEncoder(TextEncoderConfig(source=str(build_tiny_gemma3(tmp_path / "g", sliding_window=8)),
                                                max_tokens=64))
    prompt = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    kv = small([prompt], layers=[1, 2, 3], kind="kv")
    assert kv.hidden.shape[2] == kv.mask.shape[1] == small.token_count(prompt) > 8
    assert torch.isfinite(kv.hidden).all()
