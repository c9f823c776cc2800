"""A writer killed with SIGKILL at any point leaves no visible partial shard; a rerun completes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from datapipe.contract import Dataset, Storage, verify_dataset

WRITER = textwrap.dedent(
    """
    import io, sys, time
    from PIL import Image
    from datapipe.contract import ShardWriter, Storage, commit_shards

    root, n, slow = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    storage = Storage(root)
    storage.remove_stale_temporaries("shards")  # what a job does when it (re)starts
    buf = io.BytesIO(); Image.new("RGB", (32, 32), (0, 90, 200)).save(buf, "PNG"); img = buf.getvalue()
    row = dict(url="u", caption="c", width=32, height=32, original_width=32, original_height=32)
    for number in (0, 1):
        sid = f"{number:06d}"
        with ShardWriter(storage, sid, inputs=n) as w:
            for i in range(n):
                w.add(f"{sid}{i:06d}", img, "png", row)
                print(f"added {sid} {i}", flush=True)
                time.sleep(slow)
        print(f"files written {sid}", flush=True)
        time.sleep(slow * 20)
        commit_shards(storage, [w.entry])
        print(f"committed {sid}", flush=True)
    """
)


def run_writer(root, n, slow, kill_at: str | None):
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), str(n), str(slow)],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    lines = []
    for line in proc.stdout:
        lines.append(line.strip())
        if kill_at is not None and line.strip() == kill_at:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    return proc.returncode, lines


@pytest.mark.parametrize(
    "kill_at",
    ["added 000000 10", "files written 000000", "added 000001 3", "files written 000001"],
)
def test_sigkill_mid_shard_leaves_no_partial_shard(tmp_path, kill_at):
    root = tmp_path / "ds"
    rc, lines = run_writer(root, 25, 0.01, kill_at)
    assert rc == -signal.SIGKILL, lines

    committed = [l.split()[1] for l in lines if l.startswith("committed")]
    storage = Storage(root)
    if committed or storage.exists("manifest.json"):
        ds = Dataset(root)
        assert ds.manifest.shard_ids == committed
        for entry in ds.shards:  # what the manifest lists is complete
            assert len(list(ds.samples(entry.id))) == 25
    report = verify_dataset(root)
    if storage.exists("manifest.json"):
        assert report.ok, [str(p) for p in report.problems]
    # whatever the killed writer left (temporaries, unlisted files) is only a warning
    assert all(p.severity == "warning" for p in report.problems if "manifest" not in p.where)

    rc, lines = run_writer(root, 25, 0.0, None)  # the same command again finishes the work
    assert rc == 0, lines
    report = verify_dataset(root)
    assert report.ok and report.samples == 50, [str(p) for p in report.problems]
    assert not [p for p in report.problems if "temporary" in p.message]
