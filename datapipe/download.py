"""Download stage: img2dataset's Downloader, one img2dataset shard per dataset shard, on Ray.

We do not download anything ourselves. For each shard, its Ray task writes the rows (url + our
row key) as img2dataset's shard input, runs img2dataset's Downloader on it (exactly
what img2dataset's Ray distributor runs in each of its Ray tasks), and joins its per-sample results
(status, error, image bytes) back to our input rows by key, so every input row comes back as an
image or as a reject with a reason, even one img2dataset lost. The Downloader hands each result to
a sample writer class; ours (`MemorySampleWriter`) keeps them in memory for the join instead of
writing a tar and a parquet that we would only read back.

Work-arounds for img2dataset 1.47, without forking it (docs/environment.md):
- its urllib opens file://, ftp:// and data: URLs and any address, follows redirects anywhere,
  has no total time limit per image (a server that drips bytes holds a thread for minutes) and no
  size limit: `download_image` is replaced, by each shard task in its worker, with `fetch`
  (the URL policy on every hop, a deadline, a byte cap; the user agent and X-Robots-Tag opt-out
  check are img2dataset's);
- its `download()` entry point cannot stream into later stages (one blocking call, a logger
  process per call, `incremental_mode="overwrite"` deleting its own temp folder): we drive its
  Downloader class per shard instead, which also makes a killed shard simply start again;
- default resize mode "keep" disables its re-encoding (our decode stage decodes once, with PIL,
  which handles EXIF rotation, CMYK and 16-bit images that OpenCV's IMREAD_UNCHANGED does not);
- `import img2dataset.downloader` runs the package's __init__, which imports its CLI entry point
  and every writer, and with them webdataset and torch: 3.9 s of CPU in each new Ray worker, a
  large share of a small job. `import_downloader` loads only the downloader module and runs the
  real __init__ only if something in the same process asks the package for anything else
  (`img2dataset.download`, ...). The downloader's logger imports wandb (0.6 s) for a feature a
  shard task never uses: it gets a stand-in that imports wandb on first use. In resize
  mode "keep" img2dataset's Resizer only hands the bytes back (`disable_all_reencoding`), so a
  task uses `PassThroughResizer`, which does the same without importing albumentations and
  OpenCV (0.7 s); the other modes use img2dataset's Resizer.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from .config import DecodeConfig, DownloadConfig
from .fetch import ERROR, Connections, fetch
from .inputs import InputShard
from .rows import ROW_SCHEMA, reject
from .urlpolicy import UrlPolicy, redact

log = logging.getLogger(__name__)

USER_AGENT = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"
# this worker's settings for `download_image`, set from the job's DownloadConfig by install_download_patch
LIMITS = {"deadline_s": 30.0, "max_bytes": 50_000_000}
_POLICY: dict = {}  # "policy" of this worker, built once per policy config
_CONNECTIONS: list[Connections] = []  # the connections of the shard this worker downloads (download_rows)
# what arrived for each row of the shard this worker downloads (img2dataset's row index ->
# (content type, bytes)), for a reject detail that describes the response without quoting it
RESPONSES: dict[int, tuple[str | None, int]] = {}


# -- the download_image replacement ------------------------------------------------------------
def download_image(row, timeout, user_agent_token, disallowed_header_directives):
    """img2dataset's download_image (same signature and results), through `fetch`: the URL policy
    on every hop, a deadline, a byte cap, and errors in our own words (`[reason] detail`)."""
    from img2dataset.downloader import is_disallowed

    key, url = row
    agent = USER_AGENT + (f" (compatible; {user_agent_token}; +https://github.com/deepfusion)" if user_agent_token else "")
    opted_out = None
    if disallowed_header_directives:
        def opted_out(headers):
            return is_disallowed(headers, user_agent_token, disallowed_header_directives)
    own = None if _CONNECTIONS else Connections(_POLICY["policy"], keep_alive=False)  # called outside a shard
    try:
        got = fetch(own or _CONNECTIONS[-1], url, timeout, LIMITS["deadline_s"], int(LIMITS["max_bytes"]), agent,
                    opted_out)
    finally:
        if own is not None:
            own.close()
    RESPONSES[key] = (got.content_type, got.size)
    if got.body is None:
        return key, None, got.error
    return key, io.BytesIO(got.body), None


def import_downloader() -> None:
    """Make `import img2dataset.downloader` / `.resizer` load those modules without the package's
    __init__ (see the module docstring); any other attribute of the package runs the real __init__
    once, so the rest of img2dataset works as usual in the same process."""
    if "img2dataset" in sys.modules:
        return
    spec = importlib.util.find_spec("img2dataset")
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return  # not installed as a package: the plain import below reports it
    package = importlib.util.module_from_spec(spec)

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        del package.__getattr__
        spec.loader.exec_module(package)  # the real __init__, into the same module object
        return getattr(package, name)

    package.__getattr__ = __getattr__
    sys.modules["img2dataset"] = package
    _defer_import("wandb")  # img2dataset.logger's `import wandb`: loaded on first attribute use


def _defer_import(name: str) -> None:
    """Put a stand-in for module `name` in sys.modules that imports the real module the first time
    any attribute of it is asked for, and from then on forwards to it (and leaves the real one in
    sys.modules). An `import name` binds the stand-in without loading anything. (importlib's
    LazyLoader does not do here: on Python 3.11 the import statement itself reads the module's
    __spec__ and so loads it.) Nothing if `name` is loaded already."""
    if name in sys.modules:
        return
    import types

    class Deferred(types.ModuleType):
        def __getattr__(self, attr: str):
            if sys.modules.get(name) is self:
                del sys.modules[name]
            real = importlib.import_module(name)
            return getattr(real, attr)

    sys.modules[name] = Deferred(name)


def install_download_patch(cfg: DownloadConfig, decode: DecodeConfig) -> None:
    """Make img2dataset in this process download through `download_image` above, with cfg's limits.

    Called by every shard task (cheap after the first): the patch travels with the task, so the
    job needs no runtime_env (which would make Ray start dedicated workers instead of using the
    ones it has already started: seconds of a small machine's CPU per worker).
    """
    LIMITS.update(deadline_s=float(cfg.deadline_s), max_bytes=int(cfg.max_bytes))
    policy_key = json.dumps(dataclasses.asdict(cfg.url_policy), sort_keys=True)
    if _POLICY.get("key") != policy_key:
        _POLICY.update(key=policy_key, policy=UrlPolicy(cfg.url_policy))
    # OpenCV reads worker_env()'s limit once, when it loads: the job's workers inherit it; this
    # covers a process that imports img2dataset (and with it OpenCV) here first
    for name, value in worker_env(decode).items():
        os.environ.setdefault(name, value)
    import_downloader()
    import img2dataset.downloader

    img2dataset.downloader.download_image = download_image


def worker_env(decode: DecodeConfig) -> dict[str, str]:
    """Environment variables every Ray worker of a curation job needs: OpenCV (img2dataset's
    resize modes) refuses larger images before allocating them."""
    return {"OPENCV_IO_MAX_IMAGE_PIXELS": str(decode.max_pixels)}


# -- img2dataset's results, kept in memory --------------------------------------------------------
class MemorySampleWriter:
    """img2dataset's sample-writer interface (the class the Downloader builds per shard and hands
    every result to), keeping the results in memory for the join, by the shard's output folder.

    img2dataset's own writers would write a tar and a parquet that the join would read straight
    back: two more copies of every image on the CPU this job is bound by.
    """

    results: dict[str, dict[str, tuple[dict, bytes | None]]] = {}  # output folder -> row key -> (meta, image)

    def __init__(self, shard_id, output_folder, save_caption, oom_shard_count, schema, encode_format):
        self.rows = MemorySampleWriter.results.setdefault(str(output_folder), {})
        self.ext = encode_format

    def write(self, img_str, key, caption, meta):
        self.rows[meta["row_key"]] = ({**meta, "ext": self.ext}, img_str)

    def close(self):
        pass


# -- one shard (or a range of one): img2dataset's Downloader, as its Ray distributor runs it -------
class PassThroughResizer:
    """What img2dataset's Resizer does with `disable_all_reencoding=True` (resize mode "keep"):
    the downloaded bytes back, unread, with no sizes and no error."""

    def __call__(self, img_stream, blurring_bbox_list=None):
        return img_stream.read(), None, None, None, None, None


def _downloader(cfg: DownloadConfig, decode: DecodeConfig, shard_size: int, output_folder: Path):
    from img2dataset.downloader import Downloader

    if cfg.resize_mode == "keep":
        resizer = PassThroughResizer()
    else:
        from img2dataset.resizer import Resizer

        quality = cfg.encode_quality if cfg.encode_quality is not None else (3 if cfg.encode_format == "png" else 95)
        resizer = Resizer(image_size=cfg.image_size, resize_mode=cfg.resize_mode,
                          resize_only_if_bigger=True, encode_format=cfg.encode_format, encode_quality=quality,
                          skip_reencode=True, disable_all_reencoding=False,
                          # in resize modes img2dataset decodes: it applies the same limits first
                          min_image_size=decode.min_side, max_aspect_ratio=decode.max_aspect,
                          max_image_area=decode.max_pixels)
    directives = [d.strip().lower() for d in cfg.disallowed_header_directives]
    return Downloader(
        sample_writer_class=MemorySampleWriter, resizer=resizer, thread_count=cfg.threads,
        save_caption=False, extract_exif=False, output_folder=str(output_folder),
        column_list=["row_key", "url"], timeout=cfg.timeout_s, number_sample_per_shard=shard_size,
        oom_shard_count=5, compute_hash="sha256", verify_hash_type=None, encode_format=cfg.encode_format,
        retries=cfg.retries, user_agent_token=cfg.user_agent_token,
        disallowed_header_directives=directives or None,
    )


def download_rows(scratch: Path, cfg: DownloadConfig, decode: DecodeConfig, shard_size: int, shard_id: str,
                  rows: pa.Table) -> list[dict[str, Any]]:
    """Download `rows` (INPUT_SCHEMA: key, url, caption, extra) with img2dataset's Downloader, in
    this process: one row back per input row, in input order, an image or a reject.

    This is what img2dataset's own Ray distributor runs in each of its tasks; its results stay in
    memory (MemorySampleWriter) until they are joined to the input rows.
    """
    install_download_patch(cfg, decode)
    shutil.rmtree(scratch, ignore_errors=True)  # a killed earlier attempt
    scratch.mkdir(parents=True)
    arrow = scratch / "input.arrow"
    table = pa.table({"row_key": rows.column("key"), "url": rows.column("url")})
    with pa.OSFile(str(arrow), "wb") as f, pa.ipc.new_file(f, table.schema) as writer:
        writer.write_table(table)
    RESPONSES.clear()
    _CONNECTIONS.append(Connections(_POLICY["policy"], keep_alive=cfg.keep_alive, max_idle=2 * cfg.threads))
    try:
        ok, _ = _downloader(cfg, decode, shard_size, scratch)((0, str(arrow)))
    finally:  # taken out even when img2dataset fails, so a failed shard leaves nothing behind
        _CONNECTIONS.pop().close()
        results = MemorySampleWriter.results.pop(str(scratch), {})
        responses = dict(RESPONSES)
        RESPONSES.clear()
    if not ok:  # img2dataset printed the traceback; fail the task (the driver retries, then splits)
        raise RuntimeError(f"img2dataset failed on shard {shard_id}; see the Ray worker log")
    out = list(joined_rows(results, InputShard(int(shard_id), shard_id, rows), responses))
    shutil.rmtree(scratch, ignore_errors=True)
    return out


# -- joining img2dataset's output back to the input rows ---------------------------------------
EMPTY_ROW = {name: None for name in ROW_SCHEMA.names}
# img2dataset's resizer messages (its resize modes only): fixed strings of its own
_RESIZER = {"image too small": ("filter", "too_small"), "aspect ratio too large": ("filter", "bad_aspect"),
            "image area too large": ("decode", "decompression_bomb"), "image decoding error": ("decode", "undecodable")}


def classify_error(message: str) -> tuple[str, str, str]:
    """A row's error message from img2dataset -> (reject stage, machine-friendly reason, detail).

    `fetch` writes "[reason] detail" in our own words; anything else is one of img2dataset's own
    fixed messages. Nothing a server sent reaches a reject through here."""
    if match := ERROR.match(message):
        reason, detail = match.groups()
        return "download", reason, detail
    if message.lower() in _RESIZER:
        stage, reason = _RESIZER[message.lower()]
        return stage, reason, f"img2dataset: {message}"
    return "download", "error", "img2dataset reported an unclassified error"


def joined_rows(results: dict[str, tuple[dict, bytes | None]], shard: InputShard,
                responses: dict[int, tuple[str | None, int]] | None = None) -> Iterator[dict[str, Any]]:
    """One row per input row of `shard`, in input order: the downloaded image or a reject.

    `results`: our row key -> (img2dataset's metadata for it, the image bytes or None);
    `responses`: row index -> (content type, bytes received), from `fetch`. URLs leave here with
    any credentials redacted: that is the form every sidecar, reject and log holds.
    """
    responses = responses or {}
    for i, inp in enumerate(shard.rows.to_pylist()):
        row: dict[str, Any] = {**EMPTY_ROW, **inp, "shard": shard.id, "url": redact(inp["url"]),
                               "content_type": responses.get(i, (None, 0))[0]}
        result, image = results.get(inp["key"], (None, None))
        if result is None:
            yield reject(row, "download", "not_attempted", "img2dataset returned no result for this row")
        elif result["status"] != "success":
            yield reject(row, *classify_error(result["error_message"] or ""))
        elif not image:
            yield reject(row, "download", "lost", "img2dataset reported success but wrote no image")
        else:  # the extension is the configured format; the decode stage sniffs the real one
            row.update(image=image, ext=result["ext"], source_sha256=result.get("sha256"),
                       original_width=result.get("original_width"), original_height=result.get("original_height"))
            yield row
