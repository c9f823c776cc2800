"""Settings of the statistics job (jobs/configs/stats/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.config import load_yaml_config


@dataclass
class GalleryConfig:
    per_shard: int = 2  # samples taken from each shard (its first rows), as thumbnails
    max_images: int = 48  # the gallery shows at most this many (the newest shards' first)
    thumb_side: int = 160  # longest side of a thumbnail, in pixels
    jpeg_quality: int = 80


@dataclass
class StatsConfig:
    root: str = ""  # the dataset root (local path or fsspec URI)
    bins: int = 30  # histogram bins for resolutions, aspect ratios and scores
    rejects_table: int = 500  # reject rows listed on the dashboard (the newest shards first)
    reject_examples: int = 5  # examples (key, URL, detail) per stage/reason in the rejects explorer
    max_text: int = 300  # longer texts (alt text, reject detail, captions) are cut to this many chars
    gallery: GalleryConfig = field(default_factory=GalleryConfig)
    rebuild: bool = False  # ignore the cache and read every shard again

    def __post_init__(self):
        if not self.root:
            raise ValueError("stats: root is required (root=/path/to/dataset)")
        if self.bins < 2:
            raise ValueError(f"stats: bins must be >= 2, got {self.bins}")


def load_stats_config(path: str | None, overrides: list[str] | None = None) -> StatsConfig:
    return load_yaml_config(StatsConfig, path, overrides)
