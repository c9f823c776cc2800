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
    top = run("--help")
    assert top.returncode == 0
    commands = listed_commands(top.stdout)
    assert commands, top.stdout
    for command in commands:
        sub = run(command, "--help")
        assert sub.returncode == 0, sub.stderr
        for subcommand in listed_commands(sub.stdout) if "SUBCOMMAND" in sub.stdout else []:
            leaf = run(command, subcommand, "--help")
            assert leaf.returncode == 0 and "example" in leaf.stdout.lower() or "usage" in leaf.stdout, leaf.stdout


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
