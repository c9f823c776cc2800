"""`deepfusion curate` on a URL list with hostile rows and poison images among good ones.

Everything runs on loopback: the scenes server and a redirector/file server are allow-listed;
a trap listener on another loopback port is not, and counts every connection made to it.
"""

from __future__ import annotations

import base64
import io
import json
import random
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import ROOT, deepfusion_cmd, free_port
from datapipe.contract import Dataset, verify_dataset
from scenes import CorpusConfig, ScenesServer, make_corpus
from hostile_files import MARKER, mutate, odd_files, valid_files
from servers import Redirector, Trap

pytestmark = pytest.mark.slow


def test_hostile_url_list_every_row_accounted_nothing_requested_that_should_not_be(tmp_path):
    port = free_port()
    corpus = tmp_path / "corpus"
    make_corpus(corpus, CorpusConfig(n=24, seed=5, base_url=f"http://127.0.0.1:{port}"), progress=False)
    local_jpeg = tmp_path / "local.jpg"
    Image.new("RGB", (128, 128), (200, 30, 30)).save(local_jpeg)
    rng = random.Random(7)
    valid = list(valid_files(seed=3).items())
    poison = {f"odd-{k}": v for k, v in odd_files().items()}
    poison.update({f"mut-{i}": mutate(valid[i % len(valid)][1], rng) for i in range(40)})
    trap = Trap()
    files = Redirector(poison)
    good = pq.read_table(corpus / "urls.parquet").to_pylist()
    png = io.BytesIO()
    Image.new("RGB", (96, 96), (0, 200, 0)).save(png, "PNG")
    hostile = {
        "file_passwd": "file:///etc/passwd", "file_environ": "file:///proc/self/environ",
        "file_local_jpeg": f"file://{local_jpeg}", "ftp": f"ftp://127.0.0.1:{trap.port}/x.jpg",
        "data": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode(), "javascript": "javascript:alert(1)",
        "trap_port": f"http://127.0.0.1:{trap.port}/a.png", "trap_decimal": f"http://2130706433:{trap.port}/a.png",
        "trap_localhost": f"http://localhost:{trap.port}/a.png",
        "redirect_to_trap": f"http://127.0.0.1:{files.port}/to/{trap.port}/a.png",
        "redirect_to_file": f"http://127.0.0.1:{files.port}/loc?u=file:///etc/passwd",
        "credentials": "http://admin:hunter2@127.0.0.1:1/a.png", "too_long": f"http://127.0.0.1:{port}/" + "x" * 5000,
        "null": None, "empty": "",
    }
    expect_reason = {"file_passwd": "url_scheme", "file_environ": "url_scheme", "file_local_jpeg": "url_scheme",
                     "ftp": "url_scheme", "data": "url_scheme", "javascript": "url_scheme", "trap_port": "url_address",
                     "trap_decimal": "url_address", "trap_localhost": "url_address",
                     "redirect_to_trap": "url_address", "redirect_to_file": "url_scheme",
                     "credentials": "url_credentials", "too_long": "url_length", "null": "url_invalid",
                     "empty": "url_invalid"}
    rows = [{"URL": r["URL"], "TEXT": r["TEXT"], "kind": "good"} for r in good]
    rows += [{"URL": url, "TEXT": f"hostile {name}", "kind": name} for name, url in hostile.items()]
    rows += [{"URL": f"http://127.0.0.1:{files.port}/file/{name}", "TEXT": name, "kind": "poison"} for name in poison]
    random.Random(1).shuffle(rows)
    urls = tmp_path / "urls.parquet"
    pq.write_table(pa.Table.from_pylist(rows), urls)
    root = tmp_path / "ds"
    server = ScenesServer(corpus, port=port).start()
    try:
        cmd = [*deepfusion_cmd(), "curate", f"input.paths=[{urls}]", f"output={root}", "shard_size=25",
               "download.timeout_s=3", "download.deadline_s=5", "download.retries=0", "progress=false",
               "input.extra_columns=[kind]", f"download.url_policy.allow=[127.0.0.1:{port},127.0.0.1:{files.port}]"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    finally:
        server.stop()
        files.shutdown()
        trap.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert trap.connections == 0, "a disallowed loopback port was contacted"

    ds = Dataset(str(root))
    samples = {r["key"]: r for s in ds.shards for r in ds.sidecar(s.id).to_pylist()}
    rejects = {r["key"]: r for s in ds.shards for r in ds.rejects(s.id).to_pylist()}
    assert len(samples) + len(rejects) == len(rows) and not set(samples) & set(rejects)
    keys = [f"{i // 25:06d}{i % 25:06d}" for i in range(len(rows))]
    for key, row in zip(keys, rows):
        if row["kind"] in expect_reason:
            assert key in rejects, (row["kind"], samples.get(key))
            assert (rejects[key]["stage"], rejects[key]["reason"]) == ("download", expect_reason[row["kind"]]), rejects[key]
        elif row["kind"] == "good":
            assert key in samples, rejects.get(key)
    # nothing a server or a file held is written into rejects, sidecars or the run log
    text = json.dumps([*rejects.values()], default=str) + proc.stdout + proc.stderr
    text += "".join(p.read_text() for p in (root / "logs").glob("*.json"))
    for secret in ("root:x", "hunter2", MARKER.decode(), "HOME=", "PATH="):
        assert secret not in text, secret
    cred = next(r for k, r in rejects.items() if rows[keys.index(k)]["kind"] == "credentials")
    assert cred["url"] == "http://REDACTED@127.0.0.1:1/a.png"
    assert verify_dataset(str(root)).ok
    poison_outcomes = {rows[keys.index(k)]["TEXT"]: (r["stage"], r["reason"]) for k, r in rejects.items()
                       if rows[keys.index(k)]["kind"] == "poison"}
    assert poison_outcomes["odd-html-page"] == ("decode", "not_an_image")
    # a poison body is decoded (and rejected or kept), or img2dataset's truncation check stops it first
    assert all(stage in ("decode", "filter", "dedup") or reason in ("truncated", "empty_body")
               for stage, reason in poison_outcomes.values()), poison_outcomes
    Path(ROOT / "artifacts").mkdir(exist_ok=True)
    (ROOT / "artifacts" / "hostile_curate_rejects.txt").write_text(
        "\n".join(f"{rows[keys.index(k)]['kind']:18s} {r['stage']}/{r['reason']}: {r['detail']}"
                  for k, r in sorted(rejects.items())) + "\n")
