"""Caption versions: atomic shard commits, identity checks, and overlay resolution."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pytest

from datapipe.contract import (
    CAPTION_COLUMNS,
    CaptionSet,
    CaptionVersion,
    CaptionWriter,
    ContractError,
    SchemaVersionError,
    Storage,
    verify_dataset,
)
from helpers import write_shard


def caption_rows(keys, tag, status="ok"):
    now = dt.datetime.now(dt.timezone.utc)
    rows = []
    for k in keys:
        r = {c: None for c in CAPTION_COLUMNS.names}
        r.update({f"level_{i}": f"{tag} {k} L{i}" for i in range(1, 7)})
        r.update(key=k, status=status, model="m", prompt_id="p@1", finish_reason="stop",
                 prompt_tokens=10, completion_tokens=20, attempts=1, created_at=now)
        rows.append(r)
    return pa.Table.from_pylist(rows, schema=CAPTION_COLUMNS)


@pytest.fixture
def dataset(tmp_path):
    storage = Storage(tmp_path)
    write_shard(storage, 0, 4)
    write_shard(storage, 1, 4)
    return storage


def keys(shard):
    return [f"{shard}{i:06d}" for i in range(4)]


def test_versions_overlay_and_verify(dataset):
    base = CaptionWriter(dataset, CaptionVersion("v1", backend="vllm", model="tiny", prompt_set={"id": "six", "hash": "abc"}))
    base.commit_shard("000000", caption_rows(keys("000000"), "v1"))
    base.commit_shard("000001", caption_rows(keys("000001"), "v1"))
    # regenerate two rows of shard 0: one succeeds, one fails (and must not hide its parent)
    regen = CaptionVersion("v1-regen", backend="vllm", model="tiny", parent="v1", selection={"predicate": "x"})
    w = CaptionWriter(dataset, regen)
    child = pa.concat_tables([
        caption_rows(["000000000001"], "v2"),
        caption_rows(["000000000002"], "v2", status="failed"),
    ])
    w.commit_shard("000000", child)

    resolved = CaptionSet(dataset, "v1-regen").shard("000000")
    by_key = dict(zip(resolved.column("key").to_pylist(), resolved.column("level_1").to_pylist()))
    assert by_key == {
        "000000000000": "v1 000000000000 L1",
        "000000000001": "v2 000000000001 L1",
        "000000000002": "v1 000000000002 L1",
        "000000000003": "v1 000000000003 L1",
    }
    assert resolved.column("version").to_pylist().count("v1-regen") == 1
    assert CaptionSet(dataset, "v1-regen").shard("000001").num_rows == 4  # parent only
    report = verify_dataset(dataset)
    assert report.ok, [str(p) for p in report.problems]
    assert report.caption_coverage["v1"]["shards_done"] == 2
    assert report.caption_coverage["v1-regen"]["parent"] == "v1"


def test_same_version_with_other_settings_is_refused(dataset):
    CaptionWriter(dataset, CaptionVersion("v1", backend="vllm", model="a"))
    CaptionWriter(dataset, CaptionVersion("v1", backend="vllm", model="a"))  # resume: fine
    with pytest.raises(ContractError, match="already exists with other settings"):
        CaptionWriter(dataset, CaptionVersion("v1", backend="vllm", model="b"))
    with pytest.raises(ContractError, match="does not exist"):
        CaptionWriter(dataset, CaptionVersion("v2", backend="vllm", parent="nope"))
    with pytest.raises(ContractError, match="not allowed"):
        CaptionWriter(dataset, CaptionVersion("../evil", backend="vllm"))


def test_duplicate_keys_and_unknown_version_refused(dataset):
    w = CaptionWriter(dataset, CaptionVersion("v1", backend="alt"))
    with pytest.raises(ContractError, match="duplicate keys"):
        w.commit_shard("000000", caption_rows(["a", "a"], "x"))
    rel = "captions/v1/manifest.json"
    body = json.loads(dataset.read_bytes(rel))
    body["schema_version"] = 7
    dataset.write_atomic(rel, json.dumps(body).encode())
    with pytest.raises(SchemaVersionError, match="schema_version 7"):
        CaptionSet(dataset, "v1")


def test_verify_flags_captions_of_unknown_keys(dataset):
    w = CaptionWriter(dataset, CaptionVersion("v1", backend="alt"))
    w.commit_shard("000000", caption_rows(keys("000000") + ["ghost"], "x"))
    report = verify_dataset(dataset)
    assert not report.ok and any("not in image shard 000000" in p.message for p in report.errors)
