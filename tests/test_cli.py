"""The `deepfusion` command line as a user runs it: real processes, real exit codes."""

from __future__ import annotations

import re
import subprocess
import time

import requests

from conftest import deepfusion_cmd, free_port
from test_contract import write_shard

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
    made = run("scenes", "make", "--n", "12", "--faults", "0.5", "--out", str(tmp_path / "c"), "--base-url", f"http://127.0.0.1:{port}")
    assert made.returncode == 0, made.stderr
    assert "urls.parquet" in made.stdout
    server = subprocess.Popen(deepfusion_cmd() + ["scenes", "serve", str(tmp_path / "c")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(100):
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
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
    from jobs.commands import CONFIGS, config_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()  # what `make demo` leaves in the repository root
    assert config_path("train", "demo") == str(CONFIGS / "train" / "demo.yaml")
    (tmp_path / "mine.yaml").write_text("steps: 1\n")
    assert config_path("train", "mine.yaml") == "mine.yaml"
