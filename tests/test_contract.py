"""The dataset contract: shards, sidecars, rejects and manifest written and read back exactly."""

from __future__ import annotations

import io
import tarfile
import json

import pytest
from PIL import Image

from helpers import png_bytes, row, write_shard

from datapipe.contract import (
    MANIFEST,
    ContractError,
    Dataset,
    Manifest,
    SchemaVersionError,
    ShardWriter,
    Storage,
    commit_shards,
    shard_id,
    verify_dataset,
)


def test_shard_round_trip(tmp_path):
    storage = Storage(tmp_path / "ds")
    write_shard(storage, 0, 5, 2)
    write_shard(storage, 1, 3, 0)
    ds = Dataset(tmp_path / "ds")
    assert [s.id for s in ds.shards] == ["000000", "000001"]
    assert ds.manifest.samples == 8 and ds.manifest.rejects == 2
    samples = list(ds.samples("000000"))
    assert [s.key for s in samples] == [f"000000{i:06d}" for i in range(5)]
    assert samples[1].ext == "png" and samples[1].meta["url"] == "http://x/1.png"
    assert Image.open(io.BytesIO(samples[1].image)).getpixel((0, 0)) == (10, 0, 0)
    side = ds.sidecar("000000")
    assert side.column("key").to_pylist() == [s.key for s in samples]
    assert side.schema.field("width").type == "int32" and side.column("source").to_pylist()[0] == "laion"
    rej = ds.rejects("000000")
    assert rej.column("reason").to_pylist() == ["http_404", "http_404"]
    assert verify_dataset(tmp_path / "ds").ok


def test_tar_writer_writes_what_webdataset_writes_byte_for_byte():
    import webdataset as wds

    from datapipe.contract.shards import TAR_MTIME, WebDatasetTarWriter

    samples = [("000000000001", {"png": png_bytes(), "json": b'{"a": 1}'}),
               ("000000000002", {"jpg": b"\xff\xd8" + bytes(range(256)) * 40, "json": "é".encode()}),
               ("0" * 100 + "x", {"webp": b"", "json": b"{}"})]  # a name over 100 characters: a pax header
    ours, theirs = io.BytesIO(), io.BytesIO()
    writer = WebDatasetTarWriter(ours)
    reference = wds.TarWriter(theirs, mtime=TAR_MTIME)
    for key, members in samples:
        writer.write(key, members)
        reference.write({"__key__": key, **members})
    writer.close()
    reference.close()
    assert ours.getvalue() == theirs.getvalue() and len(ours.getvalue()) > 10_000
    # ordinary members get a plain ustar header: no 1 KB pax header each (a float mtime added one)
    with tarfile.open(fileobj=io.BytesIO(ours.getvalue())) as tar:
        assert [bool(m.pax_headers) for m in tar.getmembers()] == [False] * 4 + [True] * 2
    ours, short = io.BytesIO(), samples[0]
    writer = WebDatasetTarWriter(ours)
    writer.write(*short)
    writer.close()
    payload = sum(-(-len(v) // 512) * 512 + 512 for v in short[1].values())
    assert payload < len(ours.getvalue()) <= payload + 10240  # + the end-of-archive blocks and record padding


def test_rerun_replaces_shard_without_duplicates(tmp_path):
    storage = Storage(tmp_path)
    write_shard(storage, 0, 4)
    first = Manifest.load(storage).shards[0]
    write_shard(storage, 0, 4)  # same input again: the same shard, byte for byte
    manifest = Manifest.load(storage)
    assert len(manifest.shards) == 1 and manifest.shards[0].sha256 == first.sha256
    assert verify_dataset(tmp_path).ok


def test_accounting_mismatch_is_refused_and_leaves_nothing(tmp_path):
    storage = Storage(tmp_path)
    with pytest.raises(ContractError, match="every input row must end as a sample or a reject"):
        with ShardWriter(storage, "000000", inputs=3) as w:
            w.add("a1", png_bytes(), "png", row(1))
    assert storage.listdir("shards") == [] and not storage.exists(MANIFEST)


def test_writer_validates_rows(tmp_path):
    storage = Storage(tmp_path)
    with pytest.raises(ContractError, match="lacks required column"):
        with ShardWriter(storage, "000000") as w:
            w.add("a1", png_bytes(), "png", {"url": "u"})
    with pytest.raises(ContractError, match="appears twice"):
        with ShardWriter(storage, "000000") as w:
            w.add("a1", png_bytes(), "png", row(1))
            w.reject("a1", "u", "download", "x")
    with pytest.raises(ContractError, match="reject stage"):
        with ShardWriter(storage, "000000") as w:
            w.reject("a2", "u", "somewhere", "x")
    assert [n for n in storage.listdir("shards") if not n.startswith(".tmp-")] == []


def test_unknown_schema_version_is_refused_clearly(tmp_path):
    storage = Storage(tmp_path)
    write_shard(storage, 0, 1)
    body = json.loads(storage.read_bytes(MANIFEST))
    body["schema_version"] = 99
    storage.write_atomic(MANIFEST, json.dumps(body).encode())
    with pytest.raises(SchemaVersionError, match=r"schema_version 99.*reads only version\(s\) 1"):
        Dataset(tmp_path)
    report = verify_dataset(tmp_path)
    assert not report.ok and "schema_version 99" in report.errors[0].message


def test_reader_refuses_a_root_without_manifest(tmp_path):
    with pytest.raises(ContractError, match="not a deepfusion dataset"):
        Dataset(tmp_path)


def test_memory_filesystem(tmp_path):
    root = "memory://deepfusion-test/ds"
    storage = Storage(root)
    write_shard(storage, 0, 3, 1)
    write_shard(storage, 7, 2)
    ds = Dataset(root)
    assert ds.manifest.shard_ids == ["000000", "000007"]
    assert len(list(ds.samples("000007"))) == 2
    report = verify_dataset(root)
    assert report.ok, [str(p) for p in report.problems]
    storage.fs.rm(storage.root, recursive=True)


def test_verify_finds_each_kind_of_damage(tmp_path):
    storage = Storage(tmp_path)
    write_shard(storage, 0, 3)
    write_shard(storage, 1, 3)
    write_shard(storage, 2, 3)
    assert verify_dataset(tmp_path).ok
    # flip a byte in a tar, delete a sidecar, and append a foreign row to another sidecar
    tar = tmp_path / "shards/000000.tar"
    data = bytearray(tar.read_bytes())
    data[600] ^= 0xFF
    tar.write_bytes(bytes(data))
    (tmp_path / "shards/000001.parquet").unlink()
    report = verify_dataset(tmp_path)
    messages = " | ".join(str(p) for p in report.errors)
    assert "shards/000000.tar: sha256 does not match" in messages
    assert "shards/000001.parquet: listed in the manifest but missing" in messages
    assert "000002" not in messages


def test_verify_finds_keys_repeated_across_shards(tmp_path):
    storage = Storage(tmp_path)
    for number in (0, 1):
        with ShardWriter(storage, shard_id(number)) as w:
            w.add("samekey", png_bytes(), "png", row(0))
        commit_shards(storage, [w.entry])
    report = verify_dataset(tmp_path)
    assert not report.ok and any("more than one place" in p.message for p in report.errors)
