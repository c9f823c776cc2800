"""The prompt-following benchmark's analyser: ~100% on ground-truth renders, chance on unrelated
images, and intervals that mean what they say. (A trained checkpoint is scored in test_trainer.)"""

from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pytest
from PIL import Image

from scenes.render import render
from conftest import ROOT, deepfusion_cmd
from scenes.analyse import calibrate, check, facts_from_image, facts_from_scene
from scenes.eval_prompts import CATEGORIES, IN_DISTRIBUTION, OUT_OF_DISTRIBUTION, make_specs
from jobs.eval_scenes import chance, format_report, ground_truth, score, summarise, wilson


@pytest.mark.parametrize("size", [(32, 32), (64, 64), (48, 32)])
def test_ground_truth_renders_score_near_100_percent(size):
    report = ground_truth(make_specs(40, size, seed=3), size)
    for category in CATEGORIES:
        assert report[category]["accuracy"] >= 0.97, (category, report[category])
    # conditional on both objects found, and attribute-swap pairs: the ceiling is 100% too
    for metric in ("position|found", "binding|found", "binding_pairs"):
        assert report[metric]["accuracy"] >= 0.97, (metric, report[metric])
    assert report["position|found"]["found_rate"] >= 0.97 and report["binding_pairs"]["n"] == 20
    # the mean is over the in-distribution categories only
    assert report["overall"]["categories"] == list(IN_DISTRIBUTION)


def test_shape_fit_looks_past_stray_pixels_soft_edges_and_noise():
    """What a person looks past does not change the shape the analyser names: a stray pixel of the
    object's colour on its edge (which stretched the bounding box of the old fill-ratio rule, so a
    square with one speck was a circle), a blurred border, pixel noise."""
    from PIL import ImageFilter

    from trainer.buckets import resize_to_bucket

    size = (32, 32)
    calib = calibrate(size)
    specs = make_specs(60, (256, 256), seed=99, categories=("shape",))
    rng = np.random.default_rng(0)
    named = {"specked": 0, "blurred": 0, "noisy": 0}
    for spec in specs:  # rendered large and downscaled as the trainer's loader does
        image = resize_to_bucket(render(spec.scene), size).permute(1, 2, 0).numpy()
        assert check(spec, facts_from_image(Image.fromarray(image), calib))
        rgb = np.asarray(spec.scene.objects[0].rgb, dtype=np.uint8)
        ys, xs = np.nonzero((image.max(-1).astype(int) - image.min(-1)) >= 60)
        specked = image.copy()  # one pixel above the top edge, one below the bottom edge
        specked[max(ys.min() - 1, 0), int(np.median(xs[ys == ys.min()]))] = rgb
        specked[min(ys.max() + 1, 31), int(np.median(xs[ys == ys.max()]))] = rgb
        noisy = np.clip(image + rng.normal(0, 25, image.shape), 0, 255).astype(np.uint8)
        named["specked"] += check(spec, facts_from_image(Image.fromarray(specked), calib))
        named["blurred"] += check(spec, facts_from_image(Image.fromarray(image).filter(ImageFilter.GaussianBlur(0.8)), calib))
        named["noisy"] += check(spec, facts_from_image(Image.fromarray(noisy), calib))
    assert min(named.values()) >= 0.95 * len(specs), named
    with pytest.raises(ValueError, match="cannot be told apart"):
        calibrate((8, 8))


def _mismatched(specs):
    """Each spec paired with the scene of the next spec of its category; a binding swap pair with
    the next pair (first with first, second with second)."""
    groups: dict[str, list] = {}
    for s in specs:
        groups.setdefault(s.category, []).append(s)
    scored, others, keys = [], [], []
    for group in groups.values():
        step = 2 if group[0].pair is not None else 1
        for i, spec in enumerate(group):
            other = group[(i + step) % len(group)]
            scored.append(spec)
            others.append(other)
            keys.append(None if spec.pair is None else (spec.pair, other.pair))
    return scored, others, keys


def test_conditional_and_swap_metrics_on_mismatched_renders_are_chance():
    """Prompts scored on renders of other prompts' scenes: every metric, the conditional ones and
    the swap pairs included, is exactly what the scene graphs say, and near the chance row."""
    size = (64, 64)
    specs = make_specs(60, size, seed=11)
    calib = calibrate(size)
    scored, others, keys = _mismatched(specs)
    from_pixels = score(scored, [facts_from_image(render(o.scene), calib) for o in others], keys)
    from_graphs = score(scored, [facts_from_scene(o.scene) for o in others], keys)
    assert from_pixels == from_graphs
    at_chance = chance(specs)
    for metric in ("binding_pairs", "position", "binding"):
        p, n = at_chance[metric]["accuracy"], from_pixels[metric]["n"]
        assert abs(from_pixels[metric]["accuracy"] - p) <= 3 * math.sqrt(p * (1 - p) / n) + 0.05, (metric, p)
    assert from_pixels["binding_pairs"]["accuracy"] <= 0.1 and from_pixels["binding_pairs"]["n"] == 30
    # a pair is right only when both of its images are: never more often than its worse half
    assert at_chance["binding_pairs"]["accuracy"] <= at_chance["binding"]["accuracy"]
    table = format_report({"checkpoint": "x", "resolution": [64, 64], "ground_truth": ground_truth(specs, size),
                           "chance": at_chance})
    assert "position|found" in table and "binding_pairs" in table and "not in the mean" in table
    assert table.index("not in the mean") < table.index("shape_colourless")


def test_binding_prompts_come_in_attribute_swap_pairs():
    specs = [s for s in make_specs(6, (64, 64), seed=4) if s.category == "binding"]
    assert len(specs) == 6 and [s.pair for s in specs] == [0, 0, 1, 1, 2, 2]
    for a, b in zip(specs[::2], specs[1::2]):
        (ca, sa), (cb, sb) = a.target["a"], a.target["b"]
        assert b.target == {"a": [cb, sa], "b": [ca, sb]}
        assert [o.shape for o in a.scene.objects] == [o.shape for o in b.scene.objects]
        assert [o.color for o in a.scene.objects] == [o.color for o in b.scene.objects][::-1]
        assert check(a, facts_from_scene(a.scene)) and not check(a, facts_from_scene(b.scene))


def test_unrelated_images_score_at_chance_and_noise_scores_nothing():
    """Each prompt scored on the render of another prompt of its category: the analyser must
    agree with the scene graphs pair by pair, so its accuracy is chance (computed from graphs)."""
    size = (64, 64)
    specs = make_specs(60, size, seed=11)
    calib = calibrate(size)
    by_category: dict[str, list] = {}
    for s in specs:
        by_category.setdefault(s.category, []).append(s)
    scored, hits = [], []
    for group in by_category.values():
        for i, spec in enumerate(group):
            other = group[(i + 1) % len(group)]
            hit = check(spec, facts_from_image(render(other.scene), calib))
            assert hit == check(spec, facts_from_scene(other.scene)), (spec.prompt, other.scene)
            scored.append(spec)
            hits.append(hit)
    unrelated, at_chance = summarise(scored, hits), chance(specs)
    for c in CATEGORIES:
        if c == "binding":
            continue  # paired prompts: the next one is its own swap (test above pairs them properly)
        p, n = at_chance[c]["accuracy"], unrelated[c]["n"]
        assert abs(unrelated[c]["accuracy"] - p) <= 3 * math.sqrt(p * (1 - p) / n) + 0.05, (c, unrelated[c], p)
    assert 0.09 < at_chance["colour"]["accuracy"] < 0.13  # one of nine colours
    assert 0.28 < at_chance["shape"]["accuracy"] < 0.39  # one of three shapes
    assert 0.28 < at_chance["shape_colourless"]["accuracy"] < 0.41
    # pure noise has no object regions: it follows no prompt
    rng = np.random.default_rng(0)
    noise = [check(s, facts_from_image(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), calib))
             for s in specs]
    assert sum(noise) <= 0.05 * len(specs)


def test_specs_are_deterministic_and_prompts_name_what_is_drawn():
    a, b = make_specs(10, (64, 64), seed=5), make_specs(10, (64, 64), seed=5)
    assert [s.prompt for s in a] == [s.prompt for s in b] and [s.scene for s in a] == [s.scene for s in b]
    assert [s.prompt for s in make_specs(10, (64, 64), seed=6)] != [s.prompt for s in a]
    for s in a:
        if s.category in ("colour", "shape", "count", "binding", "position"):
            for o in s.scene.objects:
                assert o.color in s.prompt and o.shape in s.prompt, (s.prompt, o)
        if s.category == "rgb":
            assert "RGB {}, {}, {}".format(*s.scene.objects[0].rgb) in s.prompt


def test_wilson_interval():
    lo, hi = wilson(5, 10)
    assert math.isclose(lo, 0.2366, abs_tol=1e-3) and math.isclose(hi, 0.7634, abs_tol=1e-3)
    assert wilson(0, 20)[0] == 0 and wilson(20, 20)[1] == 1 and wilson(0, 20)[1] > 0.1


def test_cli_reference_rows(tmp_path):
    out = subprocess.run([*deepfusion_cmd(), "eval", "scenes", "--reference-only", "--size", "32x32",
                          "--config", "production", "per_category=10"], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ground truth" in out.stdout and "chance" in out.stdout and "binding" in out.stdout
    missing = subprocess.run([*deepfusion_cmd(), "eval", "scenes"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert missing.returncode == 1 and "give a run dir or checkpoint" in missing.stderr
    bad = subprocess.run([*deepfusion_cmd(), "eval", "scenes", "--reference-only", "categories=[smell]"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode == 1 and "categories must be a non-empty subset" in bad.stderr
    json.dumps(chance(make_specs(3, (32, 32))))  # reports are plain JSON


@pytest.mark.parametrize("size", [(32, 32), (64, 64)])
def test_clean_scene_rate_is_full_on_renders_and_empty_on_noise_speckle_and_blanks(size):
    """The image-quality number beside alignment: every ground-truth render is a clean scene; noise,
    a render sprinkled with coloured specks, a grainy background and a blank background are not."""
    from scenes.analyse import clean_scene

    calib = calibrate(size)
    specs = make_specs(10, size, seed=5)
    renders = [render(s.scene) for s in specs]
    assert all(clean_scene(img, calib) for img in renders)
    rng = np.random.default_rng(0)
    w, h = size
    noise = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for _ in range(10)]
    assert not any(clean_scene(img, calib) for img in noise)
    speckled = []
    for img in renders:
        arr = np.asarray(img).copy()
        ys, xs = rng.integers(0, h, h * w // 12), rng.integers(0, w, h * w // 12)
        arr[ys, xs] = rng.choice([[230, 30, 30], [30, 200, 40], [40, 60, 230]], len(ys))  # one-pixel specks
        speckled.append(Image.fromarray(arr))
    assert not any(clean_scene(img, calib) for img in speckled)
    blank = Image.new("RGB", size, specs[0].scene.background_rgb)
    assert not clean_scene(blank, calib)  # no object is not a scene of this corpus
    grainy = []
    for img in renders:  # objects intact, background grain of +-20
        arr = np.asarray(img).astype(int) + rng.integers(-20, 21, (h, w, 1))
        grainy.append(Image.fromarray(arr.clip(0, 255).astype(np.uint8)))
    assert not any(clean_scene(img, calib) for img in grainy)


def test_binding_is_scored_per_slot_and_long_prompts_are_the_scenes_own_level_5_captions():
    """A render holding only the first-named object: |first 100%, |second 0%; long prompts describe
    their scene (level-5 reference caption) and are judged by the short category's rule."""
    from dataclasses import replace

    from scenes.describe import level_5
    from scenes.eval_prompts import LONG_PROMPTS

    size = (32, 32)
    specs = make_specs(10, size, seed=11, categories=("binding", "binding_long"))
    halves = []
    for s in specs:
        scene = replace(s.scene, objects=s.scene.objects[:1])
        halves.append(facts_from_image(render(scene), calibrate(size)))
    report = score(specs, halves)
    for c in ("binding", "binding_long"):
        assert report[f"{c}|first"]["accuracy"] == 1.0 and report[f"{c}|second"]["accuracy"] == 0.0
        assert report[c]["accuracy"] == 0.0
    long = make_specs(5, size, seed=11, categories=LONG_PROMPTS)
    assert all(s.prompt == level_5(s.scene) and len(s.prompt.split()) > 20 for s in long)
    text = format_report({"checkpoint": "x", "resolution": [32, 32], "model": ground_truth(long, size)})
    assert "long prompts" in text and "binding_long|second" in text


def test_changed_prompts_change_only_the_tested_attribute():
    import random

    from scenes.eval_prompts import CHANGEABLE, OPPOSITE, changed_prompt, swapped
    from scenes.graph import COLORS, SHAPES

    rng = random.Random(0)
    for s in make_specs(30, (64, 64), seed=9, categories=CHANGEABLE):
        new = changed_prompt(s, rng)
        assert new != s.prompt, s.prompt
        old_words, new_words = s.prompt.split(), new.split()
        if s.category in ("colour", "shape", "count"):
            diff = [(a, b) for a, b in zip(old_words, new_words) if a != b]
            if s.category == "colour":  # the colour word (and its article) only
                assert len(old_words) == len(new_words) and diff[-1][0] in COLORS and diff[-1][1] in COLORS
                assert new_words[-1] == old_words[-1]
            elif s.category == "shape":
                assert diff == [(old_words[-1], new_words[-1])] and new_words[-1] in SHAPES
            else:  # the number, and the noun's plural with it; colour and shape kept
                assert old_words[0] != new_words[0] and new_words[1] == s.target["color"]
                assert new_words[2].rstrip("s") == old_words[2].rstrip("s")
                assert new_words[2].endswith("s") == (new_words[0] != "one")
        elif s.category == "position":
            assert new == s.prompt.replace(s.target["relation"], OPPOSITE[s.target["relation"]])
        else:
            assert new == swapped(s).prompt
    with pytest.raises(ValueError, match="no attribute change"):
        changed_prompt(make_specs(1, (64, 64), categories=("rgb",))[0], rng)


def test_text_use_is_zero_for_a_model_that_cannot_read_text_and_not_for_one_that_can(tiny_llm):
    """text_use's losses on a tiny untrained pipeline with random weights: the measurement moves with
    what the prompt says; with the blocks' attention outputs zeroed (the only way text enters) every
    gain is exactly 0: right, changed and empty prompts give one loss."""
    import torch

    from jobs.eval_scenes import format_text_use, text_use
    from model import EDM, DeepFusionDiT, FrozenTextEncoder, PixelCodec
    from model.config import DiTConfig, EDMConfig, TextEncoderConfig
    from trainer.sampling import Pipeline

    torch.manual_seed(0)
    encoder = FrozenTextEncoder(TextEncoderConfig(source=str(tiny_llm), max_tokens=24))
    dit = DeepFusionDiT(dit=DiTConfig(in_channels=48, patch_size=1, width=64, depth=2, heads=2, text_dims=[64],
                                      llm_layers=[4]).to_dict()).eval()
    with torch.no_grad():  # leave adaLN-Zero's start: random modulation and output, so text could matter
        for p in dit.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.2)
    pipe = Pipeline(dit, [encoder], PixelCodec(4, 1.333), EDM(EDMConfig(p_mean=0.5, p_std=1.5)), (32, 32),
                    torch.device("cpu"))
    reading = text_use(pipe, per_category=4)
    assert max(abs(reading[c]["attribute_gain"]) for c in ("colour", "shape", "count", "binding")) > 1e-4, reading
    assert text_use(pipe, per_category=4) == reading  # fixed prompts and noise: deterministic
    with torch.no_grad():
        for block in dit.blocks:
            block.attn.proj.weight.zero_()
            block.attn.proj.bias.zero_()
    blind = text_use(pipe, per_category=4)
    for c in ("colour", "shape", "count", "position", "binding"):
        assert blind[c]["attribute_gain"] == 0 and blind[c]["prompt_gain"] == 0, (c, blind[c])
        assert blind[c]["right"] == blind[c]["changed"] == blind[c]["empty"]
    assert "attribute gain" in "\n".join(format_text_use(blind))
