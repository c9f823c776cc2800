"""The two-node loopback scenario of test_curate.py, run inside a network namespace that has only
a loopback interface (the test starts this script under `unshare --net`).

    python tests/two_node_cluster.py WORKDIR   -> WORKDIR/{corpus,cluster,embedded,result.json}

A scenes server, a Ray head (`ray start --head`) and a second node (`ray start --address`, with a
resource of its own) on 127.0.0.1; `ray job submit` runs the curate job on the cluster; then the
same input is curated by an embedded run. result.json: the nodes shard tasks ran on and the
nodes' addresses, whether the job's log says it joined the cluster and succeeded, and whether
both nodes stopped (only their process groups are signalled, never `ray stop`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

FAST = ["download.timeout_s=2", "download.deadline_s=3", "download.retries=0", "download.threads=16",
        "decode.max_side=512", "progress=false"]


def main(work: Path) -> int:
    from conftest import free_port

    from scenes import CorpusConfig, ScenesServer, make_corpus

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    port = free_port()
    corpus = work / "corpus"
    make_corpus(corpus, CorpusConfig(n=96, seed=10, faults=0.1, duplicates=0.1, fault_names=["http_404", "html", "cmyk"],
                                     base_url=f"http://127.0.0.1:{port}"), progress=False)
    server = ScenesServer(corpus, port=port).start()
    ray_bin = str(Path(sys.executable).parent / "ray")
    # inside this namespace every address Ray can derive is 127.0.0.1; multi-node needs the variable at 1
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_AUTH_MODE": "disabled"}
    gcs, dash = free_port(), free_port()
    temp = Path("/tmp") / f"ray-2n-{gcs}"
    common = ["--num-cpus=2", "--node-ip-address=127.0.0.1"]  # logical CPUs: room for tasks and the index actors
    head = subprocess.Popen([ray_bin, "start", "--head", "--block", f"--port={gcs}", "--dashboard-host=127.0.0.1",
                             f"--dashboard-port={dash}", f"--temp-dir={temp}", "--include-dashboard=true", *common],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    worker = None
    args = [f"input.paths=[{corpus / 'urls.parquet'}]", "shard_size=8", *FAST, f"download.url_policy.allow=[127.0.0.1:{port}]"]
    try:
        address = f"http://127.0.0.1:{dash}"
        deadline = time.time() + 180
        while subprocess.run([ray_bin, "job", "list", "--address", address], env=env, capture_output=True).returncode:
            assert head.poll() is None, head.stdout.read()
            assert time.time() < deadline, "the Ray head did not come up"
            time.sleep(1)
        # A temp dir of its own, as a second machine has: with the head's, both nodes' runtime-env
        # agents unpack (and replace) the job's working_dir in the same folder while the driver
        # imports from it (seen: "No module named 'datapipe.dedup.service'" with the file there).
        worker = subprocess.Popen([ray_bin, "start", "--block", f"--address=127.0.0.1:{gcs}", *common,
                                   f"--temp-dir={temp}-b", '--resources={"second_node": 1}'],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True)
        import ray

        deadline = time.time() + 180
        while True:
            nodes = json.loads(subprocess.run(
                [sys.executable, "-c", "import ray, json; ray.init(address='127.0.0.1:%d', log_to_driver=False); "
                 "print(json.dumps([n['NodeManagerAddress'] for n in ray.nodes() if n['Alive']]))" % gcs],
                env=env, capture_output=True, text=True).stdout.strip().splitlines()[-1] or "[]")
            if len(nodes) == 2:
                break
            assert worker.poll() is None, worker.stdout.read()
            assert time.time() < deadline, f"the second node did not join: {nodes}"
            time.sleep(2)
        del ray
        deadline = time.time() + 180
        while True:  # `job list` answers before the head's job agent is up: submitting may be refused
            submit = subprocess.run(
                [ray_bin, "job", "submit", "--address", address, "--working-dir", str(ROOT), "--",
                 sys.executable, "-m", "jobs.curate", "--config", "embedded", f"output={work / 'cluster'}", *args,
                 "--summary-json", str(work / "cluster.json")],
                env=env, capture_output=True, text=True, timeout=420)
            if "No available agent to submit job" not in submit.stderr + submit.stdout or time.time() > deadline:
                break
            time.sleep(2)
        assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-2000:]
    finally:
        for p in (worker, head):
            if p is not None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
    try:
        embedded = subprocess.run([sys.executable, "-m", "jobs.curate", "--config", "embedded",
                                   f"output={work / 'embedded'}", *args], capture_output=True, text=True, timeout=300,
                                  cwd=ROOT)
        assert embedded.returncode == 0, embedded.stdout[-3000:] + embedded.stderr[-3000:]
    finally:
        server.stop()
    summary = json.loads((work / "cluster.json").read_text())
    said = submit.stdout + submit.stderr
    (work / "result.json").write_text(json.dumps({"nodes": summary["this_run"]["nodes"], "node_addresses": nodes,
                                                  "joined": "joined the Ray cluster at" in said,
                                                  "succeeded": "succeeded" in submit.stdout,
                                                  "nodes_stopped": [p.poll() is not None for p in (worker, head)]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
