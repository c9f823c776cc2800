"""Download stage: img2dataset's Downloader, one img2dataset shard per dataset shard, on Ray.

We do not download anything ourselves. For each shard, the first Ray Data stage writes its rows
(url + our row key) as img2dataset's shard input, runs img2dataset's Downloader on it (exactly
what img2dataset's Ray distributor runs in each of its Ray tasks), and joins the per-shard parquet
(status, error) and tar (image bytes) back to our input rows by key, so every input row comes back
as an image or as a reject with a reason, even one img2dataset lost.

Work-arounds for img2dataset 1.47, without forking it (ENVIRONMENT.md):
- no total time limit per image (a server that drips bytes holds a thread for minutes) and no
  size limit: `download_image` is replaced in every Ray worker (Ray's worker_process_setup_hook)
  by a version with a deadline and a byte cap; the rest (user agent, X-Robots-Tag) is unchanged;
- its `download()` entry point cannot stream into later stages (one blocking call, a logger
  process per call, `incremental_mode="overwrite"` deleting its own temp folder): we drive its
  Downloader class per shard instead, which also makes a killed shard simply start again;
- default resize mode "keep" disables its re-encoding (our decode stage decodes once, with PIL,
  which handles EXIF rotation, CMYK and 16-bit images that OpenCV's IMREAD_UNCHANGED does not).
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from datapipe.contract.shards import Sample, iter_tar_samples

from .config import DecodeConfig, DownloadConfig
from .inputs import InputShard
from .rows import reject

log = logging.getLogger(__name__)

DEADLINE_ENV = "DEEPFUSION_DOWNLOAD_DEADLINE_S"
MAX_BYTES_ENV = "DEEPFUSION_DOWNLOAD_MAX_BYTES"
OPT_OUT_MESSAGE = "Use of image disallowed by X-Robots-Tag directive"  # img2dataset's own wording
USER_AGENT = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"


# -- the download_image replacement ------------------------------------------------------------
def download_image(row, timeout, user_agent_token, disallowed_header_directives):
    """img2dataset's download_image (same signature and results) plus a deadline and a byte cap."""
    from img2dataset.downloader import is_disallowed

    key, url = row
    deadline = time.monotonic() + float(os.environ.get(DEADLINE_ENV, "30"))
    max_bytes = int(os.environ.get(MAX_BYTES_ENV, "50000000"))
    agent = USER_AGENT + (f" (compatible; {user_agent_token}; +https://github.com/deepfusion)" if user_agent_token else "")
    try:
        request = urllib.request.Request(url, data=None, headers={"User-Agent": agent})
        with urllib.request.urlopen(request, timeout=timeout) as r:
            if disallowed_header_directives and is_disallowed(r.headers, user_agent_token, disallowed_header_directives):
                return key, None, OPT_OUT_MESSAGE
            declared = r.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                return key, None, f"body of {declared} bytes is larger than the {max_bytes} byte limit"
            body = io.BytesIO()
            while chunk := r.read(1 << 16):
                body.write(chunk)
                if body.tell() > max_bytes:
                    return key, None, f"body is larger than the {max_bytes} byte limit"
                if time.monotonic() > deadline:
                    return key, None, f"download deadline exceeded ({body.tell()} bytes received)"
            if declared and declared.isdigit() and body.tell() < int(declared):
                return key, None, f"IncompleteRead: {body.tell()} of {declared} bytes"
        body.seek(0)
        return key, body, None
    except Exception as err:  # noqa: BLE001 - img2dataset records the message as the row's error
        return key, None, str(err) or type(err).__name__


def install_download_patch() -> None:
    """Ray's worker_process_setup_hook: every worker downloads through `download_image` above.

    It also imports what the filter stages use, while the worker starts (Ray starts workers
    ahead of tasks), so the first filter tasks do not each pay a cold import.
    """
    import img2dataset.downloader

    img2dataset.downloader.download_image = download_image
    import imagehash  # noqa: F401
    import ray.data  # noqa: F401

    import datapipe.filters.decode  # noqa: F401


def ray_runtime_env(cfg: DownloadConfig, decode: DecodeConfig) -> dict:
    return {
        "worker_process_setup_hook": "datapipe.download.install_download_patch",
        "env_vars": {DEADLINE_ENV: str(cfg.deadline_s), MAX_BYTES_ENV: str(cfg.max_bytes),
                     # OpenCV (img2dataset's resize modes) refuses larger images before allocating them
                     "OPENCV_IO_MAX_IMAGE_PIXELS": str(decode.max_pixels)},
    }


# -- one shard, as a Ray Data stage -----------------------------------------------------------
class DownloadStage:
    """Ray Data map_batches over shard ids (batch_size=1): img2dataset's Downloader for that shard.

    This is what img2dataset's own Ray distributor does (a Ray task per shard calling its
    Downloader), run as the first stage of the curation Dataset so that downloading shard k+1
    overlaps filtering shard k in one streaming execution. Its output (tar + parquet) lives only
    until the shard's rows have been read back, joined to the input rows and passed on.
    """

    def __init__(self, work: str, cfg: DownloadConfig, decode: DecodeConfig, shard_size: int):
        self.work, self.cfg, self.decode, self.shard_size = Path(work), cfg, decode, shard_size

    def _downloader(self, output_folder: Path):
        from img2dataset.downloader import Downloader
        from img2dataset.resizer import Resizer
        from img2dataset.writer import WebDatasetSampleWriter

        cfg, keep = self.cfg, self.cfg.resize_mode == "keep"
        quality = cfg.encode_quality if cfg.encode_quality is not None else (3 if cfg.encode_format == "png" else 95)
        resizer = Resizer(image_size=cfg.image_size, resize_mode="no" if keep else cfg.resize_mode,
                          resize_only_if_bigger=True, encode_format=cfg.encode_format, encode_quality=quality,
                          skip_reencode=True, disable_all_reencoding=keep,
                          # in resize modes img2dataset decodes: it applies the same limits first
                          min_image_size=self.decode.min_side, max_aspect_ratio=self.decode.max_aspect,
                          max_image_area=self.decode.max_pixels)
        directives = [d.strip().lower() for d in cfg.disallowed_header_directives]
        return Downloader(
            sample_writer_class=WebDatasetSampleWriter, resizer=resizer, thread_count=cfg.threads,
            save_caption=False, extract_exif=False, output_folder=str(output_folder),
            column_list=["row_key", "url"], timeout=cfg.timeout_s, number_sample_per_shard=self.shard_size,
            oom_shard_count=5, compute_hash="sha256", verify_hash_type=None, encode_format=cfg.encode_format,
            retries=cfg.retries, user_agent_token=cfg.user_agent_token,
            disallowed_header_directives=directives or None,
        )

    def __call__(self, batch) -> Iterator[pa.Table]:
        from .rows import to_table

        (sid,) = [str(s) for s in batch["shard"]]
        shard = InputShard(int(sid), sid, pq.read_table(self.work / "inputs" / f"{sid}.parquet"))
        out = self.work / "download" / sid
        shutil.rmtree(out, ignore_errors=True)  # a killed earlier attempt
        out.mkdir(parents=True)
        arrow = out / "input.arrow"
        table = pa.table({"row_key": shard.rows.column("key"), "url": shard.rows.column("url")})
        with pa.OSFile(str(arrow), "wb") as f, pa.ipc.new_file(f, table.schema) as writer:
            writer.write_table(table)
        ok, _ = self._downloader(out)((0, str(arrow)))
        if not ok:  # img2dataset printed the traceback; fail the task rather than reject every row
            raise RuntimeError(f"img2dataset failed on shard {sid}; see the Ray worker log")
        rows = list(joined_rows(out, shard))
        shutil.rmtree(out, ignore_errors=True)
        for start in range(0, len(rows), 256):  # bounded blocks
            yield to_table(rows[start : start + 256])


# -- joining img2dataset's output back to the input rows ---------------------------------------
_HTTP = re.compile(r"HTTP Error (\d{3})")


def classify_error(message: str) -> tuple[str, str]:
    """img2dataset's error message -> (reject stage, machine-friendly reason)."""
    m = message.lower()
    if message == OPT_OUT_MESSAGE:
        return "download", "opt_out"
    if "redirect" in m and "infinite loop" in m:
        return "download", "redirect_loop"
    if match := _HTTP.search(message):
        return "download", f"http_{match.group(1)}"
    if "deadline exceeded" in m:
        return "download", "too_slow"
    if "incompleteread" in m or "incomplete read" in m:
        return "download", "truncated"
    if "timed out" in m:
        return "download", "timeout"
    if "byte limit" in m:
        return "download", "too_large"
    if "connection refused" in m or "name or service not known" in m or "urlopen error" in m:
        return "download", "unreachable"
    # the resizer's messages (img2dataset resize modes only)
    if m == "image too small":
        return "filter", "too_small"
    if m == "aspect ratio too large":
        return "filter", "bad_aspect"
    if m == "image area too large":
        return "decode", "decompression_bomb"
    if "decoding error" in m:
        return "decode", "undecodable"
    return "download", "error"


def _downloaded_shard(download_dir: Path) -> tuple[dict[str, dict], dict[str, Sample]]:
    """img2dataset's shard 00000 in `download_dir`: results and images, both by our row key."""
    parquet = download_dir / "00000.parquet"
    if not parquet.exists():
        return {}, {}
    results = {r["row_key"]: r for r in pq.read_table(parquet).to_pylist()}
    by_i2d_key = {r["key"]: k for k, r in results.items()}
    tar = download_dir / "00000.tar"
    if not tar.exists():
        return results, {}
    with open(tar, "rb") as f:
        return results, {by_i2d_key[s.key]: s for s in iter_tar_samples(f) if s.key in by_i2d_key}


def joined_rows(download_dir: Path, shard: InputShard) -> Iterator[dict[str, Any]]:
    """One row per input row of `shard`, in input order: the downloaded image or a reject."""
    results, images = _downloaded_shard(download_dir)
    for inp in shard.rows.to_pylist():
        row: dict[str, Any] = {**inp, "shard": shard.id}
        result = results.get(inp["key"])
        if result is None:
            yield reject(row, "download", "not_attempted", "img2dataset returned no result for this row")
        elif result["status"] != "success":
            stage, reason = classify_error(result["error_message"] or "")
            yield reject(row, stage, reason, result["error_message"])
        elif inp["key"] not in images:
            yield reject(row, "download", "lost", "img2dataset reported success but wrote no image")
        else:
            image = images[inp["key"]]  # its tar extension; the decode stage sniffs the real format
            row.update(image=image.image, ext=image.ext, source_sha256=result.get("sha256"),
                       original_width=result.get("original_width"), original_height=result.get("original_height"))
            yield row
