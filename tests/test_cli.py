"""The `deepfusion` command line as a user runs it: real processes, real exit codes."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
import requests

from conftest import deepfusion_cmd, free_port
from helpers import write_shard

from datapipe.contract import Storage


def run(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(deepfusion_cmd() + list(args), capture_output=True, text=True, timeout=300, **kw)


def listed_commands(help_text: str) -> list[str]:
    block = help_text.split("positional arguments:")[1].split("options:")[0]
    return re.findall(r"^    (\w[\w-]*)\s", block, flags=re.M)


def test_every_listed_command_has_working_help():
    """The console script's top-level help as a process; every command's and subcommand's help
    from the same parser in this process (a process per command costs ~5 s of imports each)."""
    import argparse

    from jobs.cli import build_parser

    top = run("--help")
    assert top.returncode == 0
    commands = listed_commands(top.stdout)
    want = {"demo", "scenes", "curate", "caption", "recaption", "stats", "dashboard", "train", "sample", "eval", "dataset"}
    assert want <= set(commands), sorted(want - set(commands))

    def walk(parser: argparse.ArgumentParser, path: list[str]):
        yield path, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, [*path, name])

    leaves = 0
    for path, parser in walk(build_parser(), []):
        text = parser.format_help()
        assert text.startswith("usage: deepfusion"), path
        has_subcommands = any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
        if path and not has_subcommands:
            leaves += 1
            assert len(text) > 200 and parser.description, f"`deepfusion {' '.join(path)} --help` teaches nothing"
    assert leaves >= 15
    assert "verify" in run("dataset", "--help").stdout  # and a nested help as a process


def test_unknown_command_is_a_usage_error():
    assert run("frobnicate").returncode == 2


def test_scenes_make_and_serve_as_processes(tmp_path):
    port = free_port()
    made = run("scenes", "make", str(tmp_path / "c"), "n=12", "faults=0.5", f"base_url=http://127.0.0.1:{port}")
    assert made.returncode == 0, made.stderr
    assert "urls.parquet" in made.stdout
    server = subprocess.Popen(deepfusion_cmd() + ["scenes", "serve", str(tmp_path / "c")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 90  # it took >10 s to start on a loaded 2-core box
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            assert server.poll() is None, server.stdout.read()
            assert time.time() < deadline, "scenes serve did not answer /health"
            time.sleep(0.2)
        import pyarrow.parquet as pq

        url = pq.read_table(tmp_path / "c/urls.parquet").column("URL")[0].as_py()
        r = requests.get(url, timeout=5)
        assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_dataset_verify_exit_codes(tmp_path):
    storage = Storage(tmp_path / "ds")
    write_shard(storage, 0, 3, 1)
    ok = run("dataset", "verify", str(tmp_path / "ds"))
    assert ok.returncode == 0 and "OK: 0 error(s)" in ok.stdout, ok.stdout
    (tmp_path / "ds/shards/000000.parquet").unlink()
    bad = run("dataset", "verify", str(tmp_path / "ds"))
    assert bad.returncode == 1 and "listed in the manifest but missing" in bad.stdout
    missing = run("dataset", "verify", str(tmp_path / "nothing-here"))
    assert missing.returncode == 1 and "not a deepfusion dataset" in missing.stdout
    info = run("dataset", "info", str(tmp_path / "nothing-here"))
    assert info.returncode == 1 and "error:" in info.stderr and "Traceback" not in info.stderr


def test_model_info_reports_a_preset_and_rejects_unknown_ones():
    import json

    info = run("model", "info", "small", "--json")
    assert info.returncode == 0, info.stderr
    d = json.loads(info.stdout)
    assert d["dit"]["depth"] == 12 and 30e6 < d["dit_params"] < 50e6 and d["text_encoder"] == "smollm2"
    bad = run("model", "info", "huge")
    assert bad.returncode == 1 and "unknown model preset 'huge'" in bad.stderr


def test_a_folder_named_like_a_bundled_config_does_not_hide_it(tmp_path, monkeypatch):
    from jobs.profiles import CONFIGS, config_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()  # what `make demo` leaves in the repository root
    assert config_path("train", "demo") == str(CONFIGS / "train" / "demo.yaml")
    (tmp_path / "mine.yaml").write_text("steps: 1\n")
    assert config_path("train", "mine.yaml") == "mine.yaml"


def test_bad_settings_are_one_line_naming_the_key_before_anything_runs(tmp_path):
    """Typed settings all the way down: a typo under model.text_encoder, a value outside an
    enum-like field, a wrong type: one line on stderr naming the key (and the allowed values),
    exit 1, no traceback, nothing started."""
    cases = [
        (["train", "--config", "tiny", "model.text_encoder.sorce=x"], "model.text_encoder.sorce"),
        (["train", "--config", "tiny", "optim.schedule=linear"], "optim.schedule: 'linear' is not one of constant, cosine"),
        (["train", "--config", "tiny", "model.dit.width=wide"], "model.dit.width"),
        (["curate", "download.resize_mode=stretch", f"output={tmp_path / 'x'}"], "download.resize_mode"),
        (["caption", "backend=magic", f"root={tmp_path}", "version=v"], "backend: 'magic' is not one of"),
        (["sample", str(tmp_path), "steps=many"], "steps: 'many' is not an integer"),
        (["scenes", "make", str(tmp_path / "c"), "n=5", "colour=red"], "unknown key(s) colour"),
    ]
    for argv, message in cases:
        out = run(*argv)
        assert out.returncode == 1, (argv, out.stdout, out.stderr)
        assert message in out.stderr and "Traceback" not in out.stderr, (argv, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, (argv, out.stderr)


def test_one_grammar_every_setting_as_key_value_and_help_lists_the_keys(tmp_path):
    from jobs.grammar import normalize

    # --key value is the same as key=value; the shared flags stay flags, wherever they are
    assert normalize(["sample", "run", "--steps", "4", "--config", "x", "out=o"]) == ["sample", "run", "steps=4",
                                                                                      "out=o", "--config", "x"]
    assert normalize(["eval", "scenes", "--reference-only", "per_category=3"]) == [
        "eval", "scenes", "reference_only=true", "per_category=3"]
    made = run("scenes", "make", str(tmp_path / "c"), "--n", "6", "sizes=[64x64]")
    assert made.returncode == 0, made.stderr
    # a tuple-typed setting written as a YAML list (the form `scenes make --help` shows)
    from common.config import ConfigError
    from jobs.grammar import settings
    from scenes import CorpusConfig

    assert settings(CorpusConfig, ["sizes=[[64,64],[96,64]]"]).sizes == [(64, 64), (96, 64)]
    with pytest.raises(ConfigError, match=r"sizes\[0\]"):
        settings(CorpusConfig, ["sizes=[[64,wide]]"])
    for argv, key in ((["train", "--help"], "model.dit.width"), (["curate", "--help"], "download.url_policy.allow"),
                      (["sample", "--help"], "guidance"), (["scenes", "make", "--help"], "max_groups"),
                      (["demo", "--help"], "train_steps"), (["eval", "scenes", "--help"], "per_category")):
        out = run(*argv)
        assert out.returncode == 0 and key in out.stdout, (argv, out.stdout[-1500:])


def test_setup_prepares_the_cache_files_it_checks_for():
    """scripts/setup.sh skips `python -m jobs.prepare` on an up-to-date venv when two files exist
    (its `prepared` check); prepare must leave exactly those files, or every demo and test run
    would pay the de-quantisation and the op build again (or never get them)."""
    import os
    import sys

    from common.paths import cache_dir, project_root

    done = subprocess.run([sys.executable, "-m", "jobs.prepare"], capture_output=True, text=True, timeout=600,
                          cwd=project_root())
    assert done.returncode == 0, done.stderr[-2000:]
    script = (project_root() / "scripts" / "setup.sh").read_text()
    assert 'compgen -G "$CACHE/text_encoders/SmolLM2-*/model.safetensors"' in script
    assert "torch_extensions}/deepspeed_shm_comm/deepspeed_shm_comm.so" in script
    assert list(cache_dir().glob("text_encoders/SmolLM2-*/model.safetensors"))
    extensions = os.environ.get("TORCH_EXTENSIONS_DIR", str(cache_dir() / "torch_extensions"))
    assert (Path(extensions) / "deepspeed_shm_comm" / "deepspeed_shm_comm.so").is_file()
