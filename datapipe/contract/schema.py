"""The fixed shapes of the dataset contract (docs/design.md): version, names, columns, caption levels.

Every stage reads and writes through this module, so a column added here is added everywhere.
Bump SCHEMA_VERSION when a change would make an old reader misread new data; readers refuse
versions they do not know instead of guessing.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1
KNOWN_SCHEMA_VERSIONS = frozenset({1})

SHARD_ID_WIDTH = 6  # shard ids are zero-padded numbers: 000000, 000001, ...
IMAGE_EXTENSIONS = ("jpg", "png", "webp")
REJECT_STAGES = ("download", "decode", "filter", "dedup")

# Six caption granularities (level 1 shortest ... level 6 densest) with their word budgets.
# The captioner's prompt set states these budgets to the VLM and its validator enforces them;
# the synthetic reference captions respect them too.
CAPTION_LEVELS = 6
LEVEL_COLUMNS = tuple(f"level_{i}" for i in range(1, CAPTION_LEVELS + 1))
LEVEL_WORD_BUDGETS = {1: 6, 2: 15, 3: 30, 4: 60, 5: 100, 6: 200}

# Well-known caption versions besides the VLM runs.
ALT_VERSION = "alt"  # the source alt text, copied into level columns by the `alt` backend
REFERENCE_VERSION = "reference"  # ground truth of synthetic data

# Columns every sample sidecar row has; writers may add more (filter scores, carried-through
# input columns), readers must tolerate extra columns.
SAMPLE_COLUMNS = pa.schema(
    [
        ("key", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),  # the source caption (alt text), may be null
        ("ext", pa.string()),  # the image member's extension inside the tar
        ("width", pa.int32()),  # of the stored image
        ("height", pa.int32()),
        ("original_width", pa.int32()),  # as downloaded, before any resize
        ("original_height", pa.int32()),
        ("sha256", pa.string()),  # of the stored image bytes
    ]
)
OPTIONAL_SAMPLE_COLUMNS = {
    "phash": pa.string(),
    "clip_score": pa.float32(),
    "aesthetic": pa.float32(),
    "nsfw": pa.float32(),
    "watermark": pa.float32(),
}

REJECT_COLUMNS = pa.schema(
    [
        ("key", pa.string()),  # the key the row would have had: input rows are traceable
        ("url", pa.string()),
        ("stage", pa.string()),  # one of REJECT_STAGES
        ("reason", pa.string()),  # short machine-friendly reason, e.g. http_404, too_small
        ("detail", pa.string()),  # human-readable detail, may be null
    ]
)

CAPTION_STATUS_OK = "ok"
CAPTION_STATUS_FAILED = "failed"
CAPTION_COLUMNS = pa.schema(
    [("key", pa.string())]
    + [(name, pa.string()) for name in LEVEL_COLUMNS]
    + [
        ("status", pa.string()),  # ok | failed
        ("model", pa.string()),
        ("prompt_id", pa.string()),  # the prompt set's id@hash
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("attempts", pa.int32()),
        ("error", pa.string()),  # why a failed row failed
        ("raw", pa.string()),  # the raw model text of a failed row, for debugging
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)


class ContractError(Exception):
    """The data on storage does not follow the contract."""


class SchemaVersionError(ContractError):
    def __init__(self, what: str, found, path: str):
        known = ", ".join(str(v) for v in sorted(KNOWN_SCHEMA_VERSIONS))
        super().__init__(
            f"{path}: {what} has schema_version {found!r}, but this deepfusion reads only "
            f"version(s) {known}. Upgrade deepfusion to read it (or re-create the dataset)."
        )


def shard_id(number: int) -> str:
    if number < 0:
        raise ValueError(f"shard number must be >= 0, got {number}")
    return f"{number:0{SHARD_ID_WIDTH}d}"


def check_schema_version(what: str, found, path: str) -> None:
    if found not in KNOWN_SCHEMA_VERSIONS:
        raise SchemaVersionError(what, found, path)


def missing_columns(table_schema: pa.Schema, required: pa.Schema) -> list[str]:
    return [name for name in required.names if name not in table_schema.names]
