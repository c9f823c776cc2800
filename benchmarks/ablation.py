"""The conditioning study: which way of reading a frozen LLM makes the demo-scale DiT follow its
prompts, with training seeds, paired tests and parameters/FLOPs per arm.

    .venv/bin/python benchmarks/ablation.py --workdir /tmp/study                      # everything
    .venv/bin/python benchmarks/ablation.py --workdir /tmp/study --arms sparse one_to_one --seeds 0
    .venv/bin/python benchmarks/ablation.py --workdir /tmp/study --report             # table from what is done
    .venv/bin/python benchmarks/ablation.py --list                                    # the arms
    .venv/bin/python benchmarks/ablation.py --corpus single_shape --workdir /tmp/shapes --arms sparse last_layer --seeds 0

Two corpora (--corpus): `demo`, the demo's data and 1,400-step budget, where no arm learns the
shapes' outlines; and `single_shape`, one large shape per scene for 14,000 steps, where the demo's
recipe draws the named shapes (RESULTS.md), scored on colour and shape prompts, with learning
curves of shape accuracy for every arm, its runs archived in benchmarks/ablation_runs/single_shape.
Ten times the steps leave no room for a sweep per arm on it: its arms train at the lrs their sweeps
on the demo corpus picked (--lrs-from; the table's lr column says so). A workdir holds one corpus.

Every arm is the demo's recipe (jobs/configs/train/demo.yaml: the real SmolLM2-135M, 32x32 pixels,
Mix-FFN, cosine lr, the same steps, batch and data) and differs only in its overrides, printed by
--list. One synthetic scenes dataset (reference captions, 1-2 object groups) is made once; each
(arm, seed) is a training run under WORKDIR/runs/ARM/seedK, then `eval scenes` (the same prompts
and sampling seeds for every arm) and a held-out denoising loss (eval prompts' own ground-truth
renders at fixed noise levels and noise). A run whose result.json exists is reused and an
interrupted run resumes from its last checkpoint, so the study can be completed over several
sittings; `--arms`/`--seeds` select a part. Every finished run is also archived (its result and
eval report, gzipped JSON, --archive: benchmarks/ablation_runs/ARM/seedK.json.gz, committed with
the numbers RESULTS.md quotes): a later sitting, on another machine or after the workdir is gone,
reuses it instead of training it again, as long as the study's settings and the run's training
config are the same. A run is known by a fingerprint of the config it trains with (the demo recipe,
the preset it resolves and the arm's overrides; not paths, caches or the seed): a change to
demo.yaml retires only the runs whose config it changes, and a run trained at an lr override stays
valid when the recipe adopts that lr.

Steps of the study:
- `--sweep`: per arm, a run at each of --lrs, and the lr with the lowest held-out loss is that
  arm's lr for the full runs. Full length by default: the winner is the arm's seed-0 run, and a
  finished seed-0 run at one of the lrs is not trained again. A best lr at the grid's edge is
  followed by one more factor of 2 past it (twice at most); a run the trainer stops is recorded
  as diverged. The single-layer arm's layer is picked the same way (--layers); the caption-level
  arms take sparse's lr. A finished sweep is used by later invocations whatever --lrs/--layers
  they pass, unless they sweep that arm again (`--sweep` with it in --arms): then its grid must
  be theirs, else the arm is searched again (its finished sweep runs are reused). The pick is
  then confirmed on a second training seed (--confirm-seed, the arm's seed-1 run): its held-out
  loss there must beat the next lower lr's on seed 0, else the pick falls back to the lower lrs
  (a pick on one seed can sit at the edge of stability: RESULTS.md, the study's third sitting).
  The pick is archived too (ARM/sweep.json.gz). Without a finished sweep an arm trains at the
  recipe's lr, and the table's lr column says so.
- the full runs, `--seeds` each.
- the report: per arm, the categories' accuracy pooled over seeds, the mean with a bootstrap
  interval over prompts and training runs, the clean-scene rate (image quality, beside the
  alignment numbers), held-out loss, parameters and FLOPs per sample; every
  arm against the reference arm (`--reference`, default sparse) by a paired bootstrap over
  prompts and seeds (difference, interval, p) and McNemar per category; learning curves (eval
  mean vs training images) of the --curves arms as WORKDIR/learning_curves.png; all of it in
  WORKDIR/study.json and as a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SWEPT = ("optim.lr", "model.dit.text_layer")  # what a sweep varies: left out of its config fingerprint
SIX_LEVELS = "{'1': 1, '2': 1, '3': 1, '4': 1, '5': 1, '6': 1}"


@dataclass
class Arm:
    label: str
    overrides: list[str]
    sweep_layer: bool = False  # the single-layer control: its layer is picked by the sweep
    lr_from: str | None = None  # not swept: trains at this arm's picked lr (same model, other data)


ARMS: dict[str, Arm] = {
    "one_to_one": Arm("deep fusion one-to-one (PGv3: 30 narrow blocks, block i reads layer i)",
                      ["model.preset=mirror", "model.dit.width=64", "model.dit.depth=30", "model.dit.heads=2"]),
    "sparse": Arm("deep fusion sparse (the demo: 6 blocks read 6 of 30 layers)", []),
    "shared_kv": Arm("shared K/V (FuseDiT: the LLM's own keys/values per layer; width 192, 3 heads of 64)",
                     ["model.dit.conditioning=shared_kv", "model.dit.width=192", "model.dit.heads=3"]),
    "last_layer": Arm("last layer only", ["model.dit.conditioning=last_layer"]),
    "single_layer": Arm("best single layer (picked on held-out loss)", ["model.dit.conditioning=single_layer"],
                        sweep_layer=True),
    "refiner": Arm("LI-DiT refiner (layer -3, 2 gated refiner blocks)", ["model.dit.conditioning=refiner"]),
    "refiner_2llm": Arm("LI-DiT collaborative refiner (SmolLM2 + Gemma-3-270M)",
                        ["model.dit.conditioning=refiner", "model.text_encoder_2.source=gemma3"]),
    # the multi-level-caption claim, on the demo's DiT, at budgets where nothing is truncated
    # (data.level_tokens' defaults hold every reference caption; the trainer counts truncations),
    # each at the lr the sweep picked for sparse (the same model on other captions)
    "levels_all": Arm("deep fusion sparse, caption levels 1-6", [f"data.level_weights={SIX_LEVELS}"], lr_from="sparse"),
    "level6_only": Arm("deep fusion sparse, level 6 only", ["data.level_weights={'6': 1}"], lr_from="sparse"),
    "level1_only": Arm("deep fusion sparse, level 1 only", ["data.level_weights={'1': 1}"], lr_from="sparse"),
}


DEMO_CONFIG = ROOT / "jobs" / "configs" / "train" / "demo.yaml"
ARCHIVE = ROOT / "benchmarks" / "ablation_runs"


@dataclass(frozen=True)
class Corpus:
    """The data and budget a study trains every arm on, and what its eval scores."""
    label: str
    make: tuple[str, ...]  # `deepfusion scenes make` options besides n
    n: int  # scenes
    steps: int  # per full run (batch 16: the demo recipe's)
    categories: tuple[str, ...] | None  # eval and held-out categories; None: every category
    curve_every: int  # steps between learning-curve points
    curve_prompts: int  # eval prompts per category at a curve point
    archive: Path  # where its finished runs are kept
    curves: tuple[str, ...] | None  # arms with learning curves; None: every arm
    curve_metric: str = "mean"  # what learning_curves.png plots: the eval mean or one category
    lrs_from: Path | None = None  # an arm without a sweep of this study's takes its pick from this archive's sweep


CORPORA: dict[str, Corpus] = {
    # the demo's corpus (jobs/commands/demo.py) without its faults and duplicates, at the demo's budget
    "demo": Corpus("the demo's: 1-2 object groups of 1-3 shapes, 1,400 steps",
                   make=("max_groups=2", "text_probability=0"), n=2000, steps=1400, categories=None,
                   curve_every=350, curve_prompts=16, archive=ARCHIVE, curves=("one_to_one", "sparse")),
    # where the demo's recipe draws the named shapes (RESULTS.md, issue 20's eleventh sitting: shape
    # 82-88% after 180-224k images, at chance on the demo's budget); colour and shape prompts only.
    # Ten times the demo's steps are too many for an lr sweep per arm here: each arm trains at the
    # lr its sweep on the demo corpus picked.
    "single_shape": Corpus("one large shape per 256x256 scene, 14,000 steps (224,000 images)",
                           make=("seed=6", "max_groups=1", "max_count=1", "text_probability=0",
                                 "object_sizes=[large]", "sizes=[[256,256]]"),
                           n=8192, steps=14000, categories=("colour", "shape"), curve_every=2800, curve_prompts=40,
                           archive=ARCHIVE / "single_shape", curves=None, curve_metric="shape", lrs_from=ARCHIVE),
}


@functools.lru_cache(maxsize=1)
def demo_recipe():
    """The resolved demo training config (jobs/configs/train/demo.yaml) every arm starts from."""
    from trainer.config import load_config

    return load_config(DEMO_CONFIG)


def config_fingerprint(cfg, without: tuple[str, ...] = ()) -> str:
    """sha256 (16 hex digits) of what a run's numbers depend on: the trainer's config identity
    (trainer/config.py: everything but paths, logging, caches and checkpoint cadence) less the seed,
    plus its steps and the model as its preset resolves it (so a changed preset default counts).
    `without`: dotted keys left out (the sweep's own lr and layer)."""
    from trainer.train import model_configs

    d = cfg.identity()
    d.pop("seed", None)
    d["steps"] = cfg.steps
    dit, text, codec, edm = model_configs(cfg)
    d["resolved_model"] = {"dit": dit.to_dict(), "text_encoder": asdict(text), "codec": asdict(codec), "edm": asdict(edm)}
    for path in without:
        section, *rest = path.split(".")
        trees = [d] + ([d["resolved_model"]] if section == "model" else [])
        for tree in trees:
            keys = rest if tree is not d else [section, *rest]
            node = tree
            for k in keys[:-1]:
                node = node.get(k, {}) if isinstance(node, dict) else {}
            if isinstance(node, dict):
                node.pop(keys[-1], None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=512)
def planned_fingerprint(overrides: tuple[str, ...], steps: int, without: tuple[str, ...] = ()) -> str:
    """The fingerprint of the demo recipe with these overrides, trained for `steps`."""
    from trainer.config import load_config

    return config_fingerprint(load_config(DEMO_CONFIG, [*overrides, f"steps={steps}"]), without)


def run_fingerprint(run_dir: Path) -> str | None:
    """The fingerprint of what a run was trained with, from the config.json its trainer wrote
    (None before it started)."""
    from trainer.config import load_config

    path = run_dir / "config.json"
    return config_fingerprint(load_config(path)) if path.exists() else None


def recipe_lr() -> float:
    return demo_recipe().optim.lr


def sweep_run_name(lr: float, layer: int | None) -> str:
    return f"lr{lr:g}" + (f"_layer{layer}" if layer is not None else "")


def move_run(src: Path, dst: Path) -> Path:
    """Rename a run folder, its result pointing at its own report."""
    src.rename(dst)
    result = dst / "result.json"
    if result.exists():
        out = json.loads(result.read_text())
        out["report"] = str(dst / "eval" / "report.json")
        result.write_text(json.dumps(out, indent=1) + "\n")
    return dst


def set_aside(run_dir: Path) -> Path:
    """Move a run that is no longer its arm's to RUN.stale-TIME (it comes back if its config is wanted again)."""
    stale = run_dir.with_name(f"{run_dir.name}.stale-{time.time_ns()}")
    return move_run(run_dir, stale)


class Study:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = Path(args.workdir).resolve()
        self.dataset = self.work / "dataset"
        self.corpus = CORPORA[args.corpus]
        self.archive = Path(args.archive or self.corpus.archive).resolve()
        self.cli = [sys.executable, "-m", "jobs.cli"]

    # -- finished runs, in the workdir or the archive --------------------------------------
    def settings(self) -> dict:
        """What a run's numbers depend on besides its arm, seed and training config: the study's
        own settings (data, eval) and the analyser that scores the samples."""
        from scenes.analyse import ANALYSER

        a = self.args
        corpus = {} if a.corpus == "demo" else {"corpus": a.corpus, "categories": list(self.corpus.categories or [])}
        return {"n": a.n, "steps": a.steps, "per_category": a.per_category, "eval_seeds": list(a.eval_seeds),
                "heldout": a.heldout, **corpus, "analyser": ANALYSER}

    def config_for(self, overrides: list[str]) -> str:
        """The training config a run with these overrides gets, as a fingerprint. A run is reused
        when its config is the same, however it was reached: a change to demo.yaml (or a preset it
        inherits) retires only the runs it changes, and a run trained at an lr override stays valid
        when the recipe adopts that lr."""
        return planned_fingerprint(tuple(overrides), self.args.steps)

    def claim_run_dir(self, run_dir: Path, overrides: list[str]) -> None:
        """Make `run_dir` (WORKDIR/runs/ARM/seedK) the run of this config where the workdir has one:
        a run trained (or begun) with another config is moved aside, so it is neither reused nor
        resumed, and a run of this config set aside earlier (a sweep's pick changed and changed
        back) is moved back."""
        want = self.config_for(overrides)
        if run_dir.exists() and run_fingerprint(run_dir) not in (None, want):
            stale = set_aside(run_dir)
            print(f"{run_dir}: trained with another config, moved to {stale.name}", flush=True)
        if not run_dir.exists():
            for stale in sorted(run_dir.parent.glob(f"{run_dir.name}.stale-*"), reverse=True):
                if run_fingerprint(stale) == want:
                    move_run(stale, run_dir)
                    print(f"{stale}: a run of this config, moved back to {run_dir.name}", flush=True)
                    break

    def finished(self, arm: str, seed: int) -> tuple[dict, dict] | None:
        """(result, eval report) of a finished run: from the workdir, else from the archive when
        it was made with these settings and the arm's current config. A workdir run trained with
        another config (a sweep picked another lr since) is moved aside."""
        overrides = self.arm_overrides(arm)[0]
        self.claim_run_dir(self.work / "runs" / arm / f"seed{seed}", overrides)
        return self.finished_with(arm, seed, overrides, say=True)

    def finished_with(self, arm: str, seed: int, overrides: list[str], say: bool = False) -> tuple[dict, dict] | None:
        """A finished run of (arm, seed) trained with the config these overrides give, in the workdir
        or the archive."""
        want = self.config_for(overrides)
        result = self.work / "runs" / arm / f"seed{seed}" / "result.json"
        if result.exists():
            out = json.loads(result.read_text())
            settings = self.settings()
            current = settings["analyser"]
            # no settings: an older run of this study, scored as now; settings without an analyser:
            # scored before the analyser was named (the bounding-box fill rule)
            saved = out.get("settings", settings)
            analyser = saved.get("analyser")
            same_eval = {k: v for k, v in saved.items() if k != "analyser"} == {k: v for k, v in settings.items() if k != "analyser"}
            if out.get("config") == want and analyser == current and same_eval:
                return out, json.loads(Path(out["report"]).read_text())
            if say and out.get("config") == want:  # the trained run stays: only its eval is made again
                why = "with other study settings" if not same_eval else f"by another analyser ({analyser or 'bbox-fill'})"
                print(f"{result}: scored {why}, evaluated again", flush=True)
        archived = self.archive / arm / f"seed{seed}.json.gz"
        if archived.exists():
            saved = json.loads(gzip.decompress(archived.read_bytes()))
            if saved["settings"] == self.settings() and saved["result"].get("config") == want:
                return saved["result"], saved["report"]
            if say:
                print(f"{archived}: made with other settings or another training config, not reused", flush=True)
        return None

    def archive_run(self, out: dict, report: dict) -> None:
        path = self.archive / out["arm"] / f"seed{out['seed']}.json.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        saved = {"settings": out.get("settings", self.settings()), "result": {k: v for k, v in out.items() if k != "report"},
                 "report": report}
        path.write_bytes(gzip.compress(json.dumps(saved, separators=(",", ":")).encode(), mtime=0))

    # -- data ------------------------------------------------------------------------------
    def make_data(self) -> None:
        """The workdir's dataset, made once; a workdir holds one corpus (its runs resume on it)."""
        made = self.work / "corpus.json"
        want = {"corpus": self.args.corpus, "n": self.args.n, "make": list(self.corpus.make)}
        if made.exists() and json.loads(made.read_text()) != want:
            raise SystemExit(f"{self.work} holds another corpus ({made.read_text().strip()}); "
                             f"give --corpus {self.args.corpus} a workdir of its own")
        if not (self.dataset / "manifest.json").exists():
            corpus = self.work / "corpus"
            subprocess.run([*self.cli, "scenes", "make", str(corpus), f"n={self.args.n}", *self.corpus.make], check=True)
            subprocess.run([*self.cli, "scenes", "dataset", str(corpus), str(self.dataset)], check=True)
        made.write_text(json.dumps(want) + "\n")

    # -- one training run ------------------------------------------------------------------
    def train(self, run_dir: Path, overrides: list[str], steps: int, seed: int, keep: int = 1) -> float:
        every = self.args.curve_every if keep > 1 else max(steps // 4, 50)
        t0 = time.time()
        subprocess.run([*self.cli, "train", "--config", "demo", f"run_dir={run_dir}", f"data.root={self.dataset}",
                        f"steps={steps}", f"seed={seed}", "sample.every_steps=0", "sample.prompts=[]",
                        "sample.from_dataset=0", f"checkpoint.every_steps={every}", f"checkpoint.keep_last={keep}",
                        f"text_cache_mb={self.args.text_cache_mb}", *overrides], check=True)
        return time.time() - t0

    def arm_overrides(self, arm: str) -> tuple[list[str], dict]:
        """The arm's overrides plus what its sweep picked (lr, layer); `picked` says which."""
        if ARMS[arm].lr_from:
            source = self.picked(ARMS[arm].lr_from)
            if source:
                return self.overrides_for(arm, source["lr"], None), {"lr": source["lr"], "from": ARMS[arm].lr_from}
            return list(ARMS[arm].overrides), {}
        picked = self.picked(arm)
        if picked:
            return self.overrides_for(arm, picked["lr"], picked.get("layer")), picked
        if ARMS[arm].sweep_layer:
            return self.overrides_for(arm, recipe_lr(), self.args.layers[-1]), {"layer": self.args.layers[-1], "unswept": True}
        return list(ARMS[arm].overrides), {}

    def overrides_for(self, arm: str, lr: float, layer: int | None) -> list[str]:
        """The arm at this lr (and layer); the recipe's own lr needs no override."""
        return (list(ARMS[arm].overrides) + ([f"optim.lr={lr}"] if lr != recipe_lr() else [])
                + ([f"model.dit.text_layer={layer}"] if layer is not None else []))

    def sweep_settings(self, arm: str) -> dict:
        """What a sweep's results depend on: the study's settings, the grid, and the arm's training
        config less the lr and layer it sweeps (so the recipe adopting another lr keeps the sweep)."""
        a = self.args
        settings = {k: v for k, v in self.settings().items() if k != "analyser"}  # held-out losses only
        return {**settings, "sweep_steps": a.sweep_steps, "lrs": list(a.lrs),
                "layers": list(a.layers) if ARMS[arm].sweep_layer else None, "confirm_seed": a.confirm_seed,
                "config": planned_fingerprint(tuple(ARMS[arm].overrides), a.sweep_steps, SWEPT)}

    def sweep_record(self, arm: str) -> dict:
        """The arm's sweep so far (its pick once complete): the workdir's, else the archive's when
        made with these settings; {} when there is none."""
        local = self.work / "sweeps" / arm / "picked.json"
        if local.exists():
            saved = json.loads(local.read_text())
            if self.same_sweep(arm, saved.get("settings")):
                return saved["picked"]
        archived = self.archive / arm / "sweep.json.gz"
        if archived.exists():
            saved = json.loads(gzip.decompress(archived.read_bytes()))
            if self.same_sweep(arm, saved["settings"]):
                return saved["picked"]
            print(f"{archived}: made with other settings, not reused", flush=True)
        return {}

    def same_sweep(self, arm: str, settings: dict | None) -> bool:
        """Whether a saved sweep counts as this arm's. The grid it searched (--lrs, --layers) must be
        the one asked for only when this invocation sweeps the arm (--sweep, the arm in --arms);
        otherwise (a report, full runs, another arm's sweep) its pick is used whatever grid found it:
        the pick's record lists the lrs it tried."""
        if settings is None:
            return False
        want = self.sweep_settings(arm)
        if self.args.sweep and arm in self.args.arms:
            return settings == want
        grid = ("lrs", "layers")
        return {k: v for k, v in settings.items() if k not in grid} == {k: v for k, v in want.items() if k not in grid}

    def picked(self, arm: str) -> dict:
        """What the arm's complete sweep picked (confirmed on a second seed); without one, the pick
        of the arm's sweep in the corpus's --lrs-from archive (marked `transferred`); {} when none."""
        record = self.sweep_record(arm)
        if "confirm" in record:
            return record
        source = self.args.lrs_from and Path(self.args.lrs_from) / arm / "sweep.json.gz"
        if source and source.exists():
            picked = json.loads(gzip.decompress(source.read_bytes()))["picked"]
            if "confirm" in picked:
                return {**picked, "transferred": shown_path(Path(self.args.lrs_from))}
        return {}

    # -- the sweep -------------------------------------------------------------------------
    def sweep(self, arm: str) -> dict:
        """Train the arm at each lr (and layer), take the lowest held-out loss, and confirm it on a
        second training seed (--confirm-seed): the pick's loss there must still beat the next lower
        lr's (on seed 0), else the pick falls back to the lower lrs, one at a time. At the
        full length (--sweep-steps = --steps, the default) each sweep run is a complete seed-0 run
        and each confirmation a complete run of the confirm seed: finished runs with the same config
        are used instead of training them again, the seed-0 winner becomes the arm's seed-0 run and
        a kept confirmation stays its seed-1 run (only their evals are left), so the sweep costs
        little beyond the runs the study needs anyway and has no short-horizon bias towards a high lr."""
        if ARMS[arm].lr_from:
            print(f"sweep {arm}: not swept, it trains at {ARMS[arm].lr_from}'s lr", flush=True)
            return self.arm_overrides(arm)[1]
        own = self.sweep_record(arm)
        if "confirm" in own:
            return own
        out = self.work / "sweeps" / arm
        full = self.args.sweep_steps == self.args.steps
        before = {(t["lr"], t["layer"]): t for t in own.get("tried", [])}  # an unfinished sweep's
        tried = []

        def run(lr: float, layer: int | None) -> None:
            name = sweep_run_name(lr, layer)
            done = out / name / "heldout.json"
            overrides = self.overrides_for(arm, lr, layer)
            known = self.finished_with(arm, 0, overrides) if full else None
            if known is not None:
                loss = {"loss": known[0]["loss"], "from": "runs/seed0"}
                done.parent.mkdir(parents=True, exist_ok=True)  # remembered if that run is set aside later
                done.write_text(json.dumps(loss) + "\n")
            elif done.exists():
                loss = json.loads(done.read_text())
            elif (lr, layer) in before:
                loss = before[(lr, layer)]
            else:
                keep = 1000 if full and arm in self.args.curves else 1
                try:
                    train_s = self.train(out / name, overrides, self.args.sweep_steps, seed=0, keep=keep)
                    loss = {**self.heldout(out / name), "train_s": round(train_s, 1)}
                except subprocess.CalledProcessError:  # e.g. the spike guard stopped a diverging run
                    loss = {"loss": None, "diverged": True}
                done.write_text(json.dumps(loss) + "\n")
            tried.append({"lr": lr, "layer": layer, "loss": loss["loss"],
                          **{k: loss[k] for k in ("from", "diverged") if k in loss}})
            print(f"sweep {arm} {name}: " + ("diverged (the trainer stopped it)" if loss["loss"] is None
                                             else f"held-out loss {loss['loss']:.4f}"), flush=True)

        for layer in self.args.layers if ARMS[arm].sweep_layer else [None]:
            for lr in self.args.lrs:
                run(lr, layer)

        def lowest(among: list[dict]) -> dict:
            finite = [t for t in among if t["loss"] is not None]
            if not finite:
                raise RuntimeError(f"sweep {arm}: every run diverged ({[t['lr'] for t in tried]})")
            return min(finite, key=lambda t: t["loss"])

        for _ in range(2):  # a best lr at the edge of the grid: one more factor of 2 past it (twice at most)
            best = lowest(tried)
            lrs = [t["lr"] for t in tried if t["layer"] == best["layer"]]
            if best["lr"] not in (min(lrs), max(lrs)) or len(lrs) < 2:
                break
            run(best["lr"] * 2 if best["lr"] == max(lrs) else best["lr"] / 2, best["layer"])
        best, confirm = self.confirm(arm, tried, lowest)
        picked = {"lr": best["lr"], **({"layer": best["layer"]} if best["layer"] is not None else {}),
                  "held_out_loss": best["loss"], "steps": self.args.sweep_steps, "tried": tried, "confirm": confirm}
        saved = {"settings": self.sweep_settings(arm), "picked": picked}
        out.mkdir(parents=True, exist_ok=True)
        (out / "picked.json").write_text(json.dumps(saved, indent=1) + "\n")
        archived = self.archive / arm / "sweep.json.gz"
        archived.parent.mkdir(parents=True, exist_ok=True)
        archived.write_bytes(gzip.compress(json.dumps(saved, separators=(",", ":")).encode(), mtime=0))
        winner = out / sweep_run_name(best["lr"], best["layer"])
        if full and "from" not in best and run_fingerprint(winner):  # the winner is a trained seed-0 run of the arm: keep it as one
            seed0 = self.work / "runs" / arm / "seed0"
            if seed0.exists():
                set_aside(seed0)
            seed0.parent.mkdir(parents=True, exist_ok=True)
            winner.rename(seed0)
        return picked

    def confirm(self, arm: str, tried: list[dict], lowest) -> tuple[dict, list[dict]]:
        """The sweep's pick, checked on the confirm seed. A pick whose loss there is above the
        seed-0 loss of the next lower lr (it diverged, or trained into a worse basin: an lr at the
        edge of stability) gives way to the best of the lower lrs, which is checked the same way. A
        pick with no lower lr tried needs no check."""
        seed, checks = self.args.confirm_seed, []
        candidates = list(tried)
        while True:
            best = lowest(candidates)
            lower = [t for t in candidates if t["layer"] == best["layer"] and t["lr"] < best["lr"] and t["loss"] is not None]
            if seed is None or not lower:
                return best, checks
            bar = max(lower, key=lambda t: t["lr"])
            loss = self.confirm_loss(arm, best, seed)
            kept = loss is not None and loss <= bar["loss"]
            checks.append({"lr": best["lr"], "layer": best["layer"], "seed": seed, "loss": loss,
                           "bar": {"lr": bar["lr"], "loss": bar["loss"]}, "kept": kept})
            print(f"sweep {arm}: lr {best['lr']:g} on seed {seed}: " + ("diverged" if loss is None else f"held-out loss {loss:.4f}")
                  + f" against {bar['loss']:.4f} at lr {bar['lr']:g} on seed 0: " + ("kept" if kept else "dropped"), flush=True)
            if kept:
                return best, checks
            rejected = self.work / "runs" / arm / f"seed{seed}"
            if run_fingerprint(rejected) == self.config_for(self.overrides_for(arm, best["lr"], best["layer"])):
                set_aside(rejected)  # not the arm's run of that seed any more
            candidates = lower

    def confirm_loss(self, arm: str, t: dict, seed: int) -> float | None:
        """Held-out loss of the arm at this lr (and layer) trained with `seed`: a finished run, else
        trained (at full length as the arm's run of that seed, so a kept pick needs only its eval;
        a short sweep's in its sweep folder); None if it diverged."""
        overrides = self.overrides_for(arm, t["lr"], t["layer"])
        full = self.args.sweep_steps == self.args.steps
        known = self.finished_with(arm, seed, overrides) if full else None
        if known is not None:
            return known[0]["loss"]
        if full:
            run_dir = self.work / "runs" / arm / f"seed{seed}"
            self.claim_run_dir(run_dir, overrides)
        else:
            run_dir = self.work / "sweeps" / arm / f"{sweep_run_name(t['lr'], t['layer'])}_seed{seed}"
        done = run_dir / "heldout.json"
        if not done.exists():
            keep = 1000 if full and arm in self.args.curves else 1
            try:
                train_s = self.train(run_dir, overrides, self.args.sweep_steps, seed, keep=keep)
                loss = {**self.heldout(run_dir), "train_s": round(train_s, 1)}
            except subprocess.CalledProcessError:
                loss = {"loss": None, "diverged": True}
            done.write_text(json.dumps(loss) + "\n")
        return json.loads(done.read_text())["loss"]

    # -- the full runs ---------------------------------------------------------------------
    def full_run(self, arm: str, seed: int) -> dict:
        from jobs.eval_scenes import evaluate

        run_dir = self.work / "runs" / arm / f"seed{seed}"
        result = run_dir / "result.json"
        done = self.finished(arm, seed)
        if done is not None:
            archived = self.archive / arm / f"seed{seed}.json.gz"
            if not archived.exists() or json.loads(gzip.decompress(archived.read_bytes()))["result"].get("config") != done[0]["config"]:
                self.archive_run(*done)  # finished in the workdir before it was archived (or a set-aside run came back)
            return done[0]
        overrides, picked = self.arm_overrides(arm)
        curves = arm in self.args.curves
        train_s = self.train(run_dir, overrides, self.args.steps, seed, keep=1000 if curves else 1)
        config = run_fingerprint(run_dir)
        if config != self.config_for(overrides):  # e.g. a preset changed between planning and training
            raise RuntimeError(f"{run_dir} was trained with config {config}, not the planned {self.config_for(overrides)}")
        swept = run_dir / "heldout.json"  # trained by the sweep (the train above only resumed it)
        if swept.exists():
            train_s += json.loads(swept.read_text()).get("train_s", 0.0)
        t0 = time.time()
        report = evaluate(str(run_dir), self.eval_config(), run_dir / "eval")
        eval_s = time.time() - t0
        curve = self.curve(run_dir) if curves else []
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        losses = [m["loss"] for m in metrics if "loss" in m]
        out = {"arm": arm, "seed": seed, "settings": self.settings(), "config": config, "overrides": overrides,
               "picked": picked, "train_s": round(train_s, 1),
               "eval_s": round(eval_s, 1), "final_loss": round(sum(losses[-20:]) / max(len(losses[-20:]), 1), 4),
               "skipped_steps": metrics[-1].get("skipped_steps", 0) if metrics else 0, **self.heldout(run_dir),
               **self.cost(run_dir), "report": str(run_dir / "eval" / "report.json"), "curve": curve}
        result.write_text(json.dumps(out, indent=1) + "\n")
        self.archive_run(out, report)
        print(f"{arm} seed {seed}: mean {report['model']['overall']['accuracy']:.1%}, held-out loss {out['loss']:.4f}, "
              f"trained in {train_s:.0f}s", flush=True)
        return out

    def eval_config(self, per_category: int | None = None):
        from jobs.eval_scenes import EvalConfig

        return EvalConfig(per_category=per_category or self.args.per_category, seeds=list(self.args.eval_seeds),
                          steps=16, unconditional=8, **self.categories())

    def heldout(self, run_dir: Path) -> dict:
        from jobs.eval_scenes import heldout_loss

        return heldout_loss(str(run_dir), prompts=self.args.heldout, **self.categories())

    def categories(self) -> dict:
        """The corpus's eval categories as keyword arguments; none: the eval's and held-out loss's defaults."""
        return {"categories": list(self.corpus.categories)} if self.corpus.categories else {}

    def curve(self, run_dir: Path) -> list[dict]:
        """Eval mean (fewer prompts) at every kept checkpoint: the learning curve."""
        from jobs.eval_scenes import evaluate

        points = []
        for ckpt in sorted((run_dir / "checkpoints").glob("step_*")):
            step = int(ckpt.name.split("_")[1])
            report = evaluate(str(ckpt), self.eval_config(self.args.curve_prompts))
            model = report["model"]
            points.append({"step": step, "images": step * 16, "mean": model["overall"]["accuracy"],
                           "categories": {c: model[c]["accuracy"] for c in model["overall"]["categories"]}})
        return points

    def cost(self, run_dir: Path) -> dict:
        """Parameters and analytic training FLOPs per sample of the trained DiT, at the largest
        token budget of the levels it sampled (an upper bound on its text length)."""
        from model import count_parameters, dit_forward_flops
        from model.config import DiTConfig

        ckpt = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
        dit = DiTConfig(**json.loads((ckpt / "ema" / "config.json").read_text())["dit"])
        info = json.loads((ckpt / "inference.json").read_text())
        data = json.loads((run_dir / "config.json").read_text())["data"]
        tokens = max(data["level_tokens"].get(level, info["text_encoder"]["max_tokens"]) for level in data["level_weights"])
        factor = info["codec"]["factor"] if info["codec"]["kind"] == "pixels" else 8
        latent = (info["resolution"][0] // factor, info["resolution"][1] // factor)
        return {"dit_params": count_parameters(dit), "text_tokens_max": tokens,
                "dit_train_gflops_per_sample": round(3 * dit_forward_flops(dit, latent, tokens) / 1e9, 4)}

    # -- the report ------------------------------------------------------------------------
    def report(self, arms: list[str]) -> dict:
        from jobs.paired_stats import arm_outcomes, bootstrap_mean, mcnemar, paired_bootstrap
        from scenes.eval_prompts import IN_DISTRIBUTION

        runs = {}
        for a in arms:
            seeds = {int(p.parent.name[4:]) for p in (self.work / "runs" / a).glob("seed*/result.json")
                     if p.parent.name[4:].isdigit()}  # not the seedK.stale-* runs a sweep set aside
            seeds |= {int(p.name[4:].split(".")[0]) for p in (self.archive / a).glob("seed*.json.gz")}
            done = [d for d in (self.finished(a, seed) for seed in sorted(seeds)) if d is not None]
            if done:
                runs[a] = done
        if not runs:
            print("no finished runs yet")
            return {}
        results = {a: [r for r, _ in done] for a, done in runs.items()}
        reports = {a: [rep for _, rep in done] for a, done in runs.items()}
        ref = self.args.reference if self.args.reference in reports else next(iter(reports))
        scored = {e["category"] for e in reports[ref][0]["examples"]}
        cats = [c for c in IN_DISTRIBUTION if c in scored]
        keys = arm_outcomes(reports[ref][:1], cats).keys
        outcomes = {a: arm_outcomes(rs, cats, keys) for a, rs in reports.items()}
        table = {}
        for a, rs in results.items():
            o = outcomes[a]
            per_cat = {c: round(float(o.hits[:, [i for i, k in enumerate(keys) if k[0] == c]].mean()), 4) for c in cats}
            row = {"label": ARMS[a].label, "seeds": [r["seed"] for r in rs], "categories": per_cat,
                   "mean": bootstrap_mean(o, self.args.n_boot), "held_out_loss": _mean_sd([r["loss"] for r in rs]),
                   "dit_params": rs[0]["dit_params"], "dit_train_gflops_per_sample": rs[0]["dit_train_gflops_per_sample"],
                   "train_s": _mean_sd([r["train_s"] for r in rs]), "picked": self.arm_overrides(a)[1],
                   "clean_scenes": clean_rate(reports[a]), "probes": probes(reports[a])}
            if a != ref:
                row["vs_reference"] = {"bootstrap": paired_bootstrap(o, outcomes[ref], self.args.n_boot),
                                       "mcnemar": {c: mcnemar(o, outcomes[ref], c) for c in cats}}
            table[a] = row
        study = {"reference": ref, "categories": cats, "steps": self.args.steps, "eval": self.eval_config().__dict__,
                 "arms": table, "curves": {a: [r["curve"] for r in rs if r["curve"]] for a, rs in results.items()
                            if any(r["curve"] for r in rs)}}
        self.work.mkdir(parents=True, exist_ok=True)  # a sitting that has only the archive
        (self.work / "study.json").write_text(json.dumps(study, indent=1) + "\n")
        if study["curves"]:
            metric = self.corpus.curve_metric
            curves = study["curves"] if metric == "mean" else {
                a: [[{**p, "mean": p["categories"][metric]} for p in run] for run in runs] for a, runs in study["curves"].items()}
            plot_curves(curves, self.work / "learning_curves.png",
                        title="eval scenes mean (in-distribution categories)" if metric == "mean" else f"eval scenes: {metric}")
        print(format_table(study))
        return study


PROBES = ("colour", "colour_long", "binding", "binding_long", "binding|first", "binding|second",
          "binding_long|first", "binding_long|second")


def probes(reports: list[dict]) -> dict:
    """Long-prompt and per-slot accuracy (LI-DiT's positional-bias claim), pooled over the runs."""
    out = {}
    for m in PROBES:
        cells = [r["model"][m] for r in reports if m in (r.get("model") or {})]
        if cells:
            n = sum(c["n"] for c in cells)
            out[m] = round(sum(c["correct"] for c in cells) / n, 4) if n else 0.0
    return out


def clean_rate(reports: list[dict]) -> float | None:
    """The share of an arm's prompted samples that are clean scenes (image quality), pooled over
    its runs; None for reports from before the eval measured it."""
    flags = [e["clean"] for r in reports for e in r["examples"] if "clean" in e]
    return round(sum(flags) / len(flags), 4) if flags else None


def _mean_sd(values: list[float]) -> list[float]:
    import statistics

    return [round(statistics.fmean(values), 4), round(statistics.stdev(values), 4) if len(values) > 1 else 0.0]


def shown_path(path: Path) -> str:
    """A path as the report prints it: relative to the repository when inside it."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def lr_text(picked: dict) -> str:
    """The lr a run trained at and where it came from (its arm's sweep, another arm's, the recipe)."""
    lr = f"{picked.get('lr', recipe_lr()):g}"
    where = f"{picked['from']}'s pick" if "from" in picked else "swept" if "tried" in picked else "recipe, not swept"
    if "transferred" in picked:
        where += f" at {picked['steps']:,} steps, {picked['transferred']}"
    dropped = [f"{c['lr']:g}" for c in picked.get("confirm", []) if not c["kept"]]
    if dropped:
        where += f"; {', '.join(dropped)} failed on seed {picked['confirm'][0]['seed']}"
    layer = f", layer {picked['layer']}" + (" (not swept)" if picked.get("unswept") else "") if "layer" in picked else ""
    return f"{lr} ({where}{layer})"


def format_table(study: dict) -> str:
    cats, ref = study["categories"], study["reference"]
    lines = [f"| arm | seeds | lr | " + " | ".join(cats) + " | mean [95% CI] | vs " + ref + " (diff [CI], p) | clean scenes "
             "| held-out loss | DiT params | train GFLOPs/sample |", "|---" * (len(cats) + 9) + "|"]
    for a, row in study["arms"].items():
        m = row["mean"]
        vs = row.get("vs_reference", {}).get("bootstrap")
        vs_text = f"{vs['diff']:+.3f} [{vs['ci95'][0]:+.3f}, {vs['ci95'][1]:+.3f}], p={vs['p']:.3f}" if vs else "(reference)"
        loss = row["held_out_loss"]
        clean = "-" if row.get("clean_scenes") is None else f"{row['clean_scenes']:.0%}"
        spread = f" ± {loss[1]:.4f}" if len(row["seeds"]) > 1 else ""  # one seed has no spread
        lines.append(f"| {a}: {row['label']} | {len(row['seeds'])} | {lr_text(row['picked'])} | " + " | ".join(f"{row['categories'][c]:.0%}" for c in cats)
                     + f" | {m['mean']:.1%} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}] | {vs_text} | {clean}"
                     f" | {loss[0]:.4f}{spread} | {row['dit_params']:,} | {row['dit_train_gflops_per_sample']:.3f} |")
    shown = [m for m in PROBES if any(m in row["probes"] for row in study["arms"].values())]
    if set(shown) - set(cats):  # a probe beyond the categories' own columns (long prompts, slots)
        lines += ["", "| arm (long prompts and slots, pooled over seeds) | " + " | ".join(shown) + " |",
                  "|---" * (len(shown) + 1) + "|"]
        for a, row in study["arms"].items():
            lines.append(f"| {a} | " + " | ".join(f"{row['probes'][m]:.0%}" if m in row["probes"] else "-"
                                                  for m in shown) + " |")
    return "\n".join(lines)


def plot_curves(curves: dict, path: Path, size: tuple[int, int] = (720, 420),
                title: str = "eval scenes mean (in-distribution categories)") -> None:
    """Eval mean vs training images, one colour per arm (each seed its own line), drawn with PIL.
    A point's "mean" may hold any share in [0, 1]: benchmarks/demo_curve.py passes one line per metric."""
    from PIL import Image, ImageDraw

    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207),
               (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34)]  # matplotlib's tab10: 10 arms apart
    w, h = size
    left, right, top, bottom = 60, 200, 20, 50
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    xmax = max(p["images"] for runs in curves.values() for run in runs for p in run) or 1
    ymax = min(1.0, max(p["mean"] for runs in curves.values() for run in runs for p in run) * 1.2 + 0.05)
    X = lambda v: left + (w - left - right) * v / xmax  # noqa: E731
    Y = lambda v: h - bottom - (h - top - bottom) * v / ymax  # noqa: E731
    d.line([(left, top), (left, h - bottom), (w - right, h - bottom)], fill="black")
    for k in range(6):
        v = ymax * k / 5
        d.text((5, Y(v) - 6), f"{v:.0%}", fill="black")
        d.line([(left - 4, Y(v)), (left, Y(v))], fill="black")
        x = xmax * k / 5
        d.text((X(x) - 15, h - bottom + 6), f"{x:,.0f}", fill="black")
    d.text((left + 120, h - 20), "training images", fill="black")
    d.text((left + 5, top - 15), title, fill="black")
    for n, (arm, runs) in enumerate(curves.items()):
        colour = colours[n % len(colours)]
        for run in runs:
            pts = [(X(p["images"]), Y(p["mean"])) for p in run]
            if len(pts) > 1:
                d.line(pts, fill=colour, width=2)
            for x, y in pts:
                d.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
        d.text((w - right + 10, top + 16 * n), arm, fill=colour)
    img.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/study")
    ap.add_argument("--corpus", choices=list(CORPORA), default="demo",
                    help="the data and budget every arm trains on; it sets the defaults of --n, --steps, "
                         "--archive, --lrs-from, --curves, --curve-every and --curve-prompts: "
                         + "; ".join(f"{k}: {c.label}" for k, c in CORPORA.items()))
    ap.add_argument("--archive", default=None,
                    help="finished runs (result + eval report) kept here and reused by later sittings "
                         "(default: benchmarks/ablation_runs, and ablation_runs/CORPUS for another corpus)")
    ap.add_argument("--lrs-from", default=None,
                    help="an archive whose sweeps give the lr of an arm this study has not swept (default for "
                         "single_shape: the demo corpus's, benchmarks/ablation_runs)")
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds per arm")
    ap.add_argument("--n", type=int, default=None, help="scenes in the training set (default: the corpus's)")
    ap.add_argument("--steps", type=int, default=None, help="steps per full run (default: the corpus's)")
    ap.add_argument("--per-category", type=int, default=40, help="held-out eval prompts per category")
    ap.add_argument("--eval-seeds", nargs="+", type=int, default=[0, 1], help="sampling seeds per eval prompt")
    ap.add_argument("--heldout", type=int, default=64, help="prompts in the held-out loss")
    ap.add_argument("--text-cache-mb", type=int, default=6144,
                    help="the text-state cache of every run (the demo's 1,024 MB holds levels 1-3; the level-6 "
                         "states of 2,000 captions need ~5 GB, else each is encoded again every time it is drawn); "
                         "it changes the time of a run, not its numbers")
    ap.add_argument("--sweep", action="store_true", help="run the lr (and layer) sweep of the selected arms first")
    ap.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 2e-3, 4e-3])
    ap.add_argument("--layers", nargs="+", type=int, default=[8, 15, 22, 28], help="single-layer candidates (hidden-state indices; 28 = LI-DiT's -3 of 30)")
    ap.add_argument("--confirm-seed", type=int, default=1,
                    help="the training seed a sweep's pick is confirmed on (its loss there must beat the next lower "
                         "lr's on seed 0); -1: no confirmation")
    ap.add_argument("--sweep-steps", type=int, default=None,
                    help="steps per sweep run (default: --steps, so the winner is the arm's seed-0 run)")
    ap.add_argument("--curves", nargs="*", default=None, help="arms with learning curves (default: the corpus's)")
    ap.add_argument("--curve-every", type=int, default=None, help="steps between learning-curve points")
    ap.add_argument("--curve-prompts", type=int, default=None, help="eval prompts per category at a curve point")
    ap.add_argument("--reference", default="sparse", help="the arm every other is compared with")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--report", action="store_true", help="only the table, from the finished runs")
    ap.add_argument("--list", action="store_true", help="print the arms and their overrides")
    args = ap.parse_args()
    corpus = CORPORA[args.corpus]
    for key, value in (("n", corpus.n), ("steps", corpus.steps), ("curve_every", corpus.curve_every),
                       ("curve_prompts", corpus.curve_prompts), ("lrs_from", corpus.lrs_from),
                       ("curves", list(ARMS) if corpus.curves is None else list(corpus.curves))):
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.sweep_steps = args.sweep_steps or args.steps
    args.confirm_seed = None if args.confirm_seed < 0 else args.confirm_seed

    if args.list:
        for name, arm in ARMS.items():
            lr = f" (lr: {arm.lr_from}'s pick)" if arm.lr_from else ""
            print(f"{name:14s} {arm.label}\n{'':14s} {' '.join(arm.overrides) or '(the demo recipe as it is)'}{lr}")
        return
    study = Study(args)
    if not args.report:
        study.make_data()
        if args.sweep:
            for arm in args.arms:
                study.sweep(arm)
        for seed in args.seeds:  # a seed of every arm before the next seed: partial studies stay balanced
            for arm in args.arms:
                study.full_run(arm, seed)
    study.report(list(ARMS))


if __name__ == "__main__":
    main()
