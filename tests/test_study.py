"""The conditioning study's statistics (jobs/paired_stats.py), its held-out loss and its report
(benchmarks/ablation.py --report) on runs whose outcomes are known."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from jobs.paired_stats import (arm_outcomes, bootstrap_mean, category_mean, exact_binomial_two_sided, mcnemar,
                               paired_bootstrap)

CATS = ("colour", "shape", "count")


def fake_report(hit, prompts: int = 30, seeds=(0, 1), checkpoint: str = "run") -> dict:
    """A report whose image (category, prompt k, seed) was followed iff hit(category, k, seed)."""
    examples = [{"category": c, "prompt": f"{c} prompt {k}", "seed": s, "followed": bool(hit(c, k, s))}
                for c in CATS for k in range(prompts) for s in seeds]
    model = {c: {"n": len(got), "correct": sum(got)}
             for c in CATS for got in [[e["followed"] for e in examples if e["category"] == c]]}
    return {"checkpoint": checkpoint, "examples": examples, "model": model}


def bernoulli(p: float, rng: np.random.Generator):
    table = {}
    return lambda c, k, s: table.setdefault((c, k, s), rng.random() < p)


def test_exact_binomial_matches_the_closed_form():
    assert exact_binomial_two_sided(0, 0) == 1.0
    assert exact_binomial_two_sided(5, 10) == 1.0
    assert math.isclose(exact_binomial_two_sided(1, 10), 2 * (1 + 10) / 1024)
    assert math.isclose(exact_binomial_two_sided(9, 10), 2 * (1 + 10) / 1024)
    assert math.isclose(exact_binomial_two_sided(0, 5), 2 / 32)


def test_identical_arms_differ_by_nothing():
    rng = np.random.default_rng(0)
    runs = [fake_report(bernoulli(0.6, rng)) for _ in range(3)]
    a = arm_outcomes(runs)
    b = arm_outcomes(runs, keys=a.keys)
    boot = paired_bootstrap(a, b, n_boot=300)
    # each arm's training runs are resampled on their own (independent runs), so the interval of
    # two identical arms is not a point, but it is centred on nothing
    assert boot["diff"] == 0 and boot["ci95"][0] < 0 < boot["ci95"][1] and boot["p"] > 0.5
    one = arm_outcomes(runs[:1])
    assert paired_bootstrap(one, arm_outcomes(runs[:1]), n_boot=300)["ci95"] == [0, 0]  # one run: prompts alone
    assert mcnemar(a, b) == {"a_only": 0, "b_only": 0, "pairs": a.hits.size, "p": 1.0}


def test_a_real_difference_is_found_and_its_interval_covers_the_truth():
    rng = np.random.default_rng(1)
    good = arm_outcomes([fake_report(bernoulli(0.7, rng)) for _ in range(3)])
    bad = arm_outcomes([fake_report(bernoulli(0.4, rng)) for _ in range(3)], keys=good.keys)
    boot = paired_bootstrap(good, bad, n_boot=1000)
    lo, hi = boot["ci95"]
    assert lo < 0.3 < hi and lo > 0 and boot["p"] < 0.01
    assert abs(boot["diff"] - (category_mean(good.hits, good.keys) - category_mean(bad.hits, bad.keys))) < 1e-4
    test = mcnemar(good, bad)
    assert test["a_only"] > test["b_only"] and test["p"] < 0.01
    # the same arms compared the other way round: the sign flips, the evidence does not
    back = paired_bootstrap(bad, good, n_boot=1000)
    assert back["diff"] == -boot["diff"] and back["p"] < 0.01


def test_the_interval_on_the_mean_widens_with_run_to_run_variance():
    """Runs that disagree (one seed learnt, one did not) leave a wider interval than runs that agree."""
    rng = np.random.default_rng(2)
    agree = arm_outcomes([fake_report(bernoulli(0.5, rng)) for _ in range(4)])
    split = arm_outcomes([fake_report(bernoulli(p, rng), checkpoint=str(p)) for p in (0.1, 0.9, 0.1, 0.9)],
                         keys=agree.keys)
    width = lambda r: r["ci95"][1] - r["ci95"][0]  # noqa: E731
    ma, ms = bootstrap_mean(agree, 1000), bootstrap_mean(split, 1000)
    assert ma["ci95"][0] <= ma["mean"] <= ma["ci95"][1]
    assert width(ms) > 2 * width(ma)


def test_the_mean_weighs_categories_equally():
    report = fake_report(lambda c, k, s: c == "colour")  # one category of three right
    arm = arm_outcomes([report])
    assert math.isclose(category_mean(arm.hits, arm.keys), 1 / 3)
    assert arm_outcomes([report], categories=["colour"]).hits.mean() == 1.0


def test_reports_on_other_prompts_are_refused():
    a = fake_report(lambda *_: True, prompts=10)
    b = fake_report(lambda *_: True, prompts=8)
    with pytest.raises(ValueError, match="same eval settings"):
        arm_outcomes([a, b])


def load_ablation():
    """benchmarks/ablation.py as a module (it is a script, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ablation", ROOT / "benchmarks" / "ablation.py")
    ablation = importlib.util.module_from_spec(spec)
    sys.modules["ablation"] = ablation  # its dataclasses look their module up
    spec.loader.exec_module(ablation)
    return ablation


def test_the_study_report_from_finished_runs(tmp_path):
    """`ablation.py --report` on two arms of known outcomes: table, paired test, curves PNG."""
    rng = np.random.default_rng(3)
    ablation = load_ablation()
    arms = ablation.ARMS
    for arm, p in (("sparse", 0.3), ("one_to_one", 0.8)):
        for seed in (0, 1):
            run = tmp_path / "runs" / arm / f"seed{seed}"
            (run / "eval").mkdir(parents=True)
            report = fake_report(bernoulli(p, rng))
            if arm == "one_to_one":  # a long-prompt probe: the probes table only shows beyond the categories
                report["model"]["colour_long"] = {"n": 10, "correct": 7}
            (run / "eval" / "report.json").write_text(json.dumps(report))
            curve = [{"step": s, "images": 16 * s, "mean": p * s / 300} for s in (100, 200, 300)]
            (run / "result.json").write_text(json.dumps({
                "arm": arm, "seed": seed, "config": ablation.planned_fingerprint(tuple(arms[arm].overrides), 1400),
                "overrides": arms[arm].overrides, "picked": {}, "train_s": 1.0, "loss": 0.2 + seed / 100,
                "dit_params": 1000, "dit_train_gflops_per_sample": 0.5, "report": str(run / "eval" / "report.json"),
                "curve": curve}))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ablation.py"), "--workdir", str(tmp_path),
                          "--archive", str(tmp_path / "archive"), "--report", "--n-boot", "300"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    study = json.loads((tmp_path / "study.json").read_text())
    assert study["reference"] == "sparse" and set(study["arms"]) == {"sparse", "one_to_one"}
    vs = study["arms"]["one_to_one"]["vs_reference"]
    assert vs["bootstrap"]["diff"] > 0.3 and vs["bootstrap"]["p"] < 0.01
    assert set(vs["mcnemar"]) == set(CATS) and all(v["p"] < 0.05 for v in vs["mcnemar"].values())
    assert "| one_to_one:" in out.stdout and "p=" in out.stdout and f"| {ablation.recipe_lr():g} (recipe, not swept) |" in out.stdout
    probes = study["arms"]["one_to_one"]["probes"]  # pooled over both seeds' reports
    assert set(probes) == {"colour", "colour_long"} and abs(probes["colour"] - 0.8) < 0.1 and probes["colour_long"] == 0.7
    assert "long prompts and slots" in out.stdout and "| sparse | " in out.stdout and " ± " in out.stdout  # 2 seeds: a spread
    from PIL import Image

    with Image.open(tmp_path / "learning_curves.png") as img:
        assert img.size == (720, 420) and len(img.convert("RGB").getcolors(1 << 16)) > 3  # lines, not a blank page


def write_run_config(run_dir, ablation, overrides, seed=0, steps=1400):
    """The config.json a trainer writes, for a run of the demo recipe with these overrides."""
    from trainer.config import load_config

    cfg = load_config(ablation.DEMO_CONFIG, [*overrides, f"seed={seed}", f"steps={steps}", f"run_dir={run_dir}"])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict()))


def use_recipe(ablation, path, **changes):
    """Point the study at a copy of demo.yaml with some top-level sections changed."""
    import yaml

    recipe = yaml.safe_load(ablation.DEMO_CONFIG.read_text())
    for section, values in changes.items():
        recipe[section] = {**recipe.get(section, {}), **values}
    path.write_text(yaml.safe_dump(recipe))
    ablation.DEMO_CONFIG = path
    ablation.demo_recipe.cache_clear()
    ablation.planned_fingerprint.cache_clear()


def test_finished_runs_are_archived_and_reused_only_with_the_same_config(tmp_path):
    """A later sitting without the workdir reads the archived runs; other study settings or another
    training config do not reuse them; a run trained at an lr override is still reused once the
    recipe itself adopts that lr (a run is known by the config it trained with)."""
    import gzip
    import shutil
    from types import SimpleNamespace

    ablation = load_ablation()
    args = SimpleNamespace(workdir=str(tmp_path / "work"), archive=str(tmp_path / "archive"), n=2000, steps=1400,
                           corpus="demo", lrs_from=None,
                           per_category=30, eval_seeds=[0, 1], heldout=64, layers=[28])
    study = ablation.Study(args)
    rng = np.random.default_rng(5)
    for arm, p in (("sparse", 0.3), ("last_layer", 0.6)):
        run = tmp_path / "work" / "runs" / arm / "seed0"
        (run / "eval").mkdir(parents=True)
        (run / "eval" / "report.json").write_text(json.dumps(fake_report(bernoulli(p, rng))))
        overrides = study.arm_overrides(arm)[0]
        (run / "result.json").write_text(json.dumps({
            "arm": arm, "seed": 0, "settings": study.settings(), "config": study.config_for(overrides),
            "overrides": overrides, "picked": {}, "train_s": 1.0, "loss": 0.2, "dit_params": 1000,
            "dit_train_gflops_per_sample": 0.5, "report": str(run / "eval" / "report.json"), "curve": []}))
        write_run_config(run, ablation, overrides)
        assert study.full_run(arm, 0)["arm"] == arm  # finished in the workdir: archived, nothing trained
    saved = json.loads(gzip.decompress((tmp_path / "archive" / "last_layer" / "seed0.json.gz").read_bytes()))
    assert saved["settings"]["steps"] == 1400 and len(saved["report"]["examples"]) == 180

    def report(*extra):
        return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ablation.py"), "--workdir",
                               str(tmp_path / "work"), "--archive", str(tmp_path / "archive"), "--report",
                               "--per-category", "30", "--n-boot", "200", *extra],
                              capture_output=True, text=True, timeout=300)

    first = report()
    assert first.returncode == 0, first.stderr[-3000:]
    table = json.loads((tmp_path / "work" / "study.json").read_text())
    shutil.rmtree(tmp_path / "work")  # the next sitting has the archive only
    again = report()
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "work" / "study.json").read_text())["arms"] == table["arms"]
    other = report("--steps", "700")
    assert "not reused" in other.stdout and "no finished runs yet" in other.stdout
    shutil.rmtree(tmp_path / "work")
    assert study.finished("sparse", 0) is not None  # the archive, same config
    # samples scored by another analyser are not compared with the current one's
    path = tmp_path / "archive" / "sparse" / "seed0.json.gz"
    current = path.read_bytes()
    saved = json.loads(gzip.decompress(current))
    saved["settings"].pop("analyser")  # as archived before the analyser was named: the bounding-box fill rule
    path.write_bytes(gzip.compress(json.dumps(saved).encode()))
    assert study.finished("sparse", 0) is None and study.finished("last_layer", 0) is not None
    path.write_bytes(current)

    # a changed recipe retires the runs whose config it changes
    lr = ablation.recipe_lr()
    use_recipe(ablation, tmp_path / "ema.yaml", ema={"halflife_images": 4321})
    assert study.finished("sparse", 0) is None and study.finished("last_layer", 0) is None

    # a run trained with an lr override is the recipe's run once the recipe adopts that lr
    use_recipe(ablation, tmp_path / "old.yaml")  # the recipe as it was
    overrides = ["model.dit.conditioning=last_layer", f"optim.lr={lr * 2}"]
    run = tmp_path / "work" / "runs" / "last_layer" / "seed1"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "report.json").write_text(json.dumps(fake_report(bernoulli(0.5, rng))))
    (run / "result.json").write_text(json.dumps({"arm": "last_layer", "seed": 1, "config": study.config_for(overrides),
                                                 "overrides": overrides, "report": str(run / "eval" / "report.json")}))
    write_run_config(run, ablation, overrides, seed=1)
    assert study.finished_with("last_layer", 1, overrides) is not None
    result = json.loads((run / "result.json").read_text())
    (run / "result.json").write_text(json.dumps({**result, "settings": {"n": 2000}}))  # scored before the analyser was named
    assert study.finished_with("last_layer", 1, overrides) is None
    (run / "result.json").write_text(json.dumps(result))
    assert study.finished_with("last_layer", 1, ["model.dit.conditioning=last_layer"]) is None  # not the recipe's lr
    use_recipe(ablation, tmp_path / "new.yaml", optim={"lr": lr * 2})
    assert study.arm_overrides("last_layer")[0] == ["model.dit.conditioning=last_layer"]
    done = study.finished("last_layer", 1)
    assert done is not None and done[0]["overrides"] == overrides
    # the archive follows the workdir's run of the arm's config (e.g. a set-aside run that came back)
    archived = tmp_path / "archive" / "last_layer" / "seed1.json.gz"
    archived.parent.mkdir(parents=True, exist_ok=True)
    archived.write_bytes(gzip.compress(json.dumps({"settings": study.settings(), "result": {"config": "another"},
                                                   "report": {}}).encode()))
    study.full_run("last_layer", 1)
    assert json.loads(gzip.decompress(archived.read_bytes()))["result"]["config"] == done[0]["config"]


def test_the_sweep_picks_the_lowest_loss_confirmed_on_a_second_seed(tmp_path):
    """The sweep trains each (lr, layer) on seed 0 and keeps the lowest held-out loss if, on seed 1,
    that lr still beats the next lower one; else it falls back to the lower lrs. The pick is
    archived and a later sitting reads it; a run the trainer stops is a result (diverged), not
    the end of the study."""
    from types import SimpleNamespace

    ablation = load_ablation()
    r = ablation.recipe_lr()

    def study_for(work, losses, diverging=(), steps=400):
        """losses: {(lr factor, seed): held-out loss}, or (layer, factor, seed) for the layer sweep."""
        args = SimpleNamespace(workdir=str(tmp_path / work), archive=str(tmp_path / "archive"), n=2000, steps=1400,
                               corpus="demo", lrs_from=None,
                               per_category=40, eval_seeds=[0, 1], heldout=64, layers=[15, 28], curves=[],
                               lrs=[r / 2, r, r * 2], sweep_steps=steps, confirm_seed=1, sweep=False, arms=[])
        study = ablation.Study(args)
        trained, runs = [], {}

        def train(run_dir, overrides, steps, seed, keep=1):
            write_run_config(run_dir, ablation, overrides, seed, steps)
            trained.append((overrides, seed))
            lr = next((float(o[9:]) for o in overrides if o.startswith("optim.lr=")), r)
            layer = next((int(o.split("=")[1]) for o in overrides if o.startswith("model.dit.text_layer=")), None)
            runs[run_dir] = (lr / r,) + (seed,) if layer is None else (layer, lr / r, seed)
            if lr / r in diverging:
                raise subprocess.CalledProcessError(1, ["train"])  # as when the spike guard stops a run
            return 0.0

        study.train = train
        study.heldout = lambda run_dir: {"loss": losses[runs[run_dir]]}
        return study, trained

    study, trained = study_for("w1", {(0.5, 0): 0.30, (1, 0): 0.20, (2, 0): 0.25, (1, 1): 0.21})
    assert study.arm_overrides("last_layer") == (["model.dit.conditioning=last_layer"], {})
    picked = study.sweep("last_layer")
    assert [seed for _, seed in trained] == [0, 0, 0, 1] and picked["lr"] == r
    assert [t["loss"] for t in picked["tried"]] == [0.30, 0.20, 0.25]
    assert picked["confirm"] == [{"lr": r, "layer": None, "seed": 1, "loss": 0.21, "bar": {"lr": r / 2, "loss": 0.30},
                                  "kept": True}]
    assert study.arm_overrides("last_layer")[0] == ["model.dit.conditioning=last_layer"]  # the recipe's lr: no override
    again, trained_again = study_for("w2", {})  # a new workdir: the archive's pick, nothing trained
    assert again.sweep("last_layer") == picked and trained_again == []
    # an invocation that does not sweep the arm uses its pick whatever grid it passes (a report, full
    # runs, another arm's sweep); one that sweeps this arm with another grid searches again
    other_grid, _ = study_for("w2b", {})
    other_grid.args.lrs = [r, r * 2, r * 4]
    assert other_grid.picked("last_layer") == picked
    other_grid.args.sweep, other_grid.args.arms = True, ["sparse"]
    assert other_grid.picked("last_layer") == picked
    other_grid.args.arms = ["last_layer"]
    assert other_grid.picked("last_layer") == {}
    other_grid.args.steps = other_grid.args.sweep_steps = 1400  # other settings than the grid: never its pick
    other_grid.args.sweep = False
    assert other_grid.picked("last_layer") == {}

    # an lr that wins on seed 0 and fails on seed 1 (the edge of stability) gives way to the lower lrs:
    # x4 is tried past the grid's edge and diverges; x2 wins on seed 0, is worse than x1 on seed 1;
    # x1 beats /2 on seed 1 and is kept
    edge, trained = study_for("w6", {(0.5, 0): 0.30, (1, 0): 0.20, (2, 0): 0.10, (2, 1): 0.35, (1, 1): 0.19},
                              diverging={4})
    picked = edge.sweep("sparse")
    assert picked["lr"] == r and picked["tried"][-1] == {"lr": r * 4, "layer": None, "loss": None, "diverged": True}
    assert [(c["lr"], c["kept"]) for c in picked["confirm"]] == [(r * 2, False), (r, True)]
    assert f"{r:g} (swept; {r * 2:g} failed on seed 1)" == ablation.lr_text(picked)
    # the caption-level arms are not swept: they train at sparse's picked lr
    assert edge.sweep("level1_only") == {"lr": r, "from": "sparse"}
    assert edge.arm_overrides("level1_only")[0] == ["data.level_weights={'1': 1}"]
    double, _ = study_for("w1b", {(0.5, 0): 0.3, (1, 0): 0.3, (2, 0): 0.1, (4, 0): 0.2, (2, 1): 0.1})
    assert double.sweep("shared_kv")["lr"] == r * 2
    assert double.arm_overrides("shared_kv")[0][-1] == f"optim.lr={r * 2}"

    # lr x2 at layer 28 wins, at the grid's edge: lr x4 is tried there too, and loses; seed 1 keeps x2
    losses = {(layer, f, 0): 0.3 for layer in (15, 28) for f in (0.5, 1, 2)}
    losses.update({(28, 2, 0): 0.1, (28, 4, 0): 0.2, (28, 2, 1): 0.25})
    layer_study, trained = study_for("w3", losses)
    picked = layer_study.sweep("single_layer")
    assert len(trained) == 8 and picked["layer"] == 28 and picked["lr"] == r * 2 and picked["confirm"][0]["kept"]
    assert trained[-2][0] == ["model.dit.conditioning=single_layer", f"optim.lr={r * 4}", "model.dit.text_layer=28"]
    assert layer_study.arm_overrides("single_layer")[0] == [
        "model.dit.conditioning=single_layer", f"optim.lr={r * 2}", "model.dit.text_layer=28"]
    other, _ = study_for("w4", {})
    other.args.sweep_steps = 200  # another sweep: its pick is not this one's
    assert other.picked("single_layer") == {}

    # at full length the sweep reuses the finished seed-0 run at the recipe's lr, promotes the
    # winning run to the arm's seed-0 run and confirms on the arm's seed-1 run; a seed-1 run that
    # fails is set aside
    full, trained = study_for("w5", {(0.5, 0): 0.30, (2, 0): 0.10, (4, 0): 0.15, (2, 1): 0.3, (1, 1): 0.18},
                              steps=1400)
    run = tmp_path / "w5" / "runs" / "refiner" / "seed0"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "report.json").write_text("{}")
    overrides = ["model.dit.conditioning=refiner"]
    (run / "result.json").write_text(json.dumps({"overrides": overrides, "config": full.config_for(overrides),
                                                 "loss": 0.20, "report": str(run / "eval" / "report.json")}))
    write_run_config(run, ablation, overrides)
    picked = full.sweep("refiner")
    assert [t["loss"] for t in picked["tried"]] == [0.30, 0.20, 0.10, 0.15] and picked["tried"][1]["from"] == "runs/seed0"
    assert trained == [(overrides + [f"optim.lr={r / 2}"], 0), (overrides + [f"optim.lr={r * 2}"], 0),
                       (overrides + [f"optim.lr={r * 4}"], 0), (overrides + [f"optim.lr={r * 2}"], 1), (overrides, 1)]
    assert picked["lr"] == r and full.arm_overrides("refiner")[0] == overrides
    runs = tmp_path / "w5" / "runs" / "refiner"
    assert (runs / "seed0" / "result.json").exists()  # the recipe-lr run stays the arm's seed 0
    assert (runs / "seed1" / "heldout.json").exists() and not (runs / "seed1" / "result.json").exists()  # to evaluate
    assert len(list(runs.glob("seed1.stale-*"))) == 1  # the x2 run on seed 1, set aside

    # a run finished in the workdir with another config than the arm's is set aside, not reused
    layer_study.archive = tmp_path / "archive2"
    run = tmp_path / "w3" / "runs" / "single_layer" / "seed0"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "report.json").write_text("{}")
    overrides = ["model.dit.conditioning=single_layer", "model.dit.text_layer=28"]
    (run / "result.json").write_text(json.dumps({"overrides": overrides, "config": layer_study.config_for(overrides),
                                                 "report": str(run / "eval" / "report.json")}))
    write_run_config(run, ablation, overrides)
    assert layer_study.finished("single_layer", 0) is None
    assert not run.exists() and len(list(run.parent.glob("seed0.stale-*"))) == 1
    stale = next(run.parent.glob("seed0.stale-*"))
    assert json.loads((stale / "result.json").read_text())["report"] == str(stale / "eval" / "report.json")
    layer_study.report(["single_layer"])  # the set-aside run is not a seed of the arm
    layer_study.claim_run_dir(run, overrides)  # wanted again (the pick changed back): it is moved back
    assert run.exists() and not stale.exists()
    assert json.loads((run / "result.json").read_text())["report"] == str(run / "eval" / "report.json")
    assert layer_study.finished_with("single_layer", 0, overrides) is not None


def test_a_study_on_the_single_shape_corpus_takes_the_demo_sweeps_lrs_and_keeps_its_own_runs(tmp_path):
    """--corpus single_shape: arms without a sweep of their own train at their demo-corpus sweep's
    pick (the table says where it came from); its runs are not the demo study's (other settings);
    eval and held-out loss score colour and shape only; the curves PNG plots shape."""
    import gzip
    from types import SimpleNamespace

    ablation = load_ablation()
    corpus = ablation.CORPORA["single_shape"]
    demo_archive = tmp_path / "demo_archive"
    pick = {"lr": 0.004, "held_out_loss": 0.1, "steps": 1400, "tried": [{"lr": 0.002, "layer": None, "loss": 0.11},
            {"lr": 0.004, "layer": None, "loss": 0.1}], "confirm": [{"lr": 0.004, "layer": None, "seed": 1,
            "loss": 0.1, "bar": {"lr": 0.002, "loss": 0.11}, "kept": True}]}
    (demo_archive / "last_layer").mkdir(parents=True)
    (demo_archive / "last_layer" / "sweep.json.gz").write_bytes(gzip.compress(json.dumps({"settings": {}, "picked": pick}).encode()))

    def study_for(name, lrs_from):
        args = SimpleNamespace(workdir=str(tmp_path / "work"), archive=str(tmp_path / "archive"), n=corpus.n,
                               steps=corpus.steps, corpus=name, lrs_from=lrs_from, per_category=40, eval_seeds=[0, 1],
                               heldout=64, layers=[28], sweep=False, arms=[], lrs=[0.002], sweep_steps=corpus.steps,
                               confirm_seed=1)
        return ablation.Study(args)

    study = study_for("single_shape", str(demo_archive))
    overrides, picked = study.arm_overrides("last_layer")
    assert "optim.lr=0.004" in overrides and picked["transferred"] == str(demo_archive)
    assert "at 1,400 steps, " + str(demo_archive) in ablation.lr_text(picked)
    assert study.arm_overrides("sparse") == ([], {})  # no sweep to take a pick from: the recipe's lr
    assert study_for("single_shape", None).arm_overrides("last_layer")[1] == {}
    assert study.settings()["corpus"] == "single_shape" and study.settings()["categories"] == ["colour", "shape"]
    assert "corpus" not in study_for("demo", None).settings()  # the demo study's archived runs keep their settings
    assert study.eval_config().categories == ["colour", "shape"]

    # a finished run of the demo study's settings is not one of this study's
    run = tmp_path / "work" / "runs" / "sparse" / "seed0"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "report.json").write_text(json.dumps(fake_report(lambda c, k, s: True)))
    demo = study_for("demo", None)
    (run / "result.json").write_text(json.dumps({"arm": "sparse", "seed": 0, "settings": demo.settings(),
                                                 "config": study.config_for([]), "report": str(run / "eval" / "report.json")}))
    write_run_config(run, ablation, [], steps=corpus.steps)
    assert study.finished("sparse", 0) is None
    # a workdir holds one corpus: its runs resume on its dataset
    (tmp_path / "work" / "corpus.json").write_text(json.dumps({"corpus": "demo", "n": 2000, "make": []}))
    with pytest.raises(SystemExit, match="another corpus"):
        study.make_data()

    # the report plots each curve point's shape accuracy
    rng = np.random.default_rng(7)
    for arm, p in (("sparse", 0.3), ("last_layer", 0.8)):
        run = tmp_path / "runs" / arm / "seed0"
        (run / "eval").mkdir(parents=True)
        (run / "eval" / "report.json").write_text(json.dumps(fake_report(bernoulli(p, rng))))
        curve = [{"step": s, "images": 16 * s, "mean": 0.9, "categories": {"colour": 1.0, "shape": p * s / 14000}}
                 for s in (2800, 8400, 14000)]
        (run / "result.json").write_text(json.dumps({
            "arm": arm, "seed": 0, "settings": study.settings() | {"eval_seeds": [0, 1]},
            "config": ablation.planned_fingerprint(tuple(ablation.ARMS[arm].overrides), corpus.steps),
            "overrides": [], "picked": {}, "train_s": 1.0, "loss": 0.2, "dit_params": 1000,
            "dit_train_gflops_per_sample": 0.5, "report": str(run / "eval" / "report.json"), "curve": curve}))
        write_run_config(run, ablation, list(ablation.ARMS[arm].overrides), steps=corpus.steps)
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ablation.py"), "--corpus", "single_shape",
                          "--workdir", str(tmp_path), "--archive", str(tmp_path / "archive2"), "--lrs-from",
                          str(tmp_path / "none"), "--report", "--n-boot", "200"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    study_json = json.loads((tmp_path / "study.json").read_text())
    assert study_json["steps"] == corpus.steps and set(study_json["curves"]) == {"sparse", "last_layer"}
    from PIL import Image

    with Image.open(tmp_path / "learning_curves.png") as img:
        assert len(img.convert("RGB").getcolors(1 << 16)) > 3


def test_repeated_prompt_texts_stay_separate_images():
    """Two prompts of a category may share their words (another scene): each is its own image."""
    report = {"examples": [{"category": "colour", "prompt": "a red circle", "seed": 0, "followed": True},
                           {"category": "colour", "prompt": "a red circle", "seed": 0, "followed": False},
                           {"category": "colour", "prompt": "a blue square", "seed": 0, "followed": False}]}
    arm = arm_outcomes([report])
    assert len(arm.keys) == 3 and math.isclose(category_mean(arm.hits, arm.keys), 1 / 3)


def test_the_demo_curve_reads_each_checkpoints_report_and_draws_it(tmp_path):
    """benchmarks/demo_curve.py on a run whose checkpoints are already scored: no model is loaded,
    the table follows the checkpoints in step order with the images each had seen."""
    run = tmp_path / "run"
    for step, acc, clean in ((700, 0.4, 0.0), (1400, 0.5, 0.25)):
        ckpt = run / "checkpoints" / f"step_{step:08d}"
        ckpt.mkdir(parents=True)
        (ckpt / "inference.json").write_text(json.dumps({"images": step * 16}))
        cells = {c: {"accuracy": acc} for c in ("colour", "shape", "count", "position", "binding")}
        report = {"model": {**cells, "overall": {"accuracy": acc, "ci95": [acc - 0.1, acc + 0.1]}},
                  "quality": {"model": {"accuracy": clean}}}
        (run / "curve" / ckpt.name).mkdir(parents=True)
        (run / "curve" / ckpt.name / "report.json").write_text(json.dumps(report))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "demo_curve.py"), str(run)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| 11,200") or line.startswith("| 22,400")]
    assert rows == ["| 11,200 | 40% | 40% | 40% | 40% | 40% | 40.0% [0.30,0.50] | 0% |",
                    "| 22,400 | 50% | 50% | 50% | 50% | 50% | 50.0% [0.40,0.60] | 25% |"]
    points = json.loads((run / "curve" / "curve.json").read_text())["points"]
    assert [p["images"] for p in points] == [11_200, 22_400] and points[1]["clean scenes"] == 0.25
    from PIL import Image

    with Image.open(run / "curve" / "curve.png") as img:
        assert len(img.convert("RGB").getcolors(1 << 16)) > 3
    # a corpus of single shapes is scored on colour and shape only: the table has those columns
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "demo_curve.py"), str(run), "--categories",
                          "colour", "shape"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| images seen | colour | shape | mean [95%] | clean scenes |" in out.stdout
    assert "| 22,400 | 50% | 50% | 50.0% [0.40,0.60] | 25% |" in out.stdout
