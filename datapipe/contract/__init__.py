"""The on-disk data contract shared by every stage (docs/design.md, "The data contract").

Writers: ShardWriter + commit_shards (image shards), CaptionWriter (caption versions).
Readers: Dataset (committed shards, samples, sidecars, rejects), CaptionSet (resolved captions).
Integrity: verify_dataset.
"""

from .captions import CaptionSet, CaptionShard, CaptionVersion, CaptionWriter, caption_table, list_versions
from .dataset import Dataset
from .manifest import MANIFEST, Manifest, ShardEntry, commit_shards, utc_now
from .schema import (
    ALT_VERSION,
    CAPTION_COLUMNS,
    CAPTION_LEVELS,
    CAPTION_STATUS_FAILED,
    CAPTION_STATUS_OK,
    LEVEL_COLUMNS,
    LEVEL_WORD_BUDGETS,
    REFERENCE_VERSION,
    REJECT_COLUMNS,
    REJECT_STAGES,
    SAMPLE_COLUMNS,
    SCHEMA_VERSION,
    ContractError,
    SchemaVersionError,
    shard_id,
)
from .shards import Sample, ShardWriter, iter_tar_samples, sample_table
from .storage import Storage
from .verify import Problem, VerifyReport, verify_dataset

