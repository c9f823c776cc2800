"""`deepfusion scenes make`: a synthetic corpus as a URL list, its images and its ground truth.

Layout of the output folder:
    corpus.json            the parameters, the base URL, counts
    images/<scene>.png     base renders (the server encodes variants from these on request)
    urls.parquet           the URL list a curation job reads: URL, TEXT, WIDTH, HEIGHT (LAION
                           style) plus scene_id, carried through to the sample sidecars
    ground_truth.parquet   per input row: what it is (ok, a fault, a duplicate), what a pipeline
                           must make of it, the scene graph, the alt text, six reference captions
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from datapipe.contract.schema import LEVEL_COLUMNS

from .describe import alt_text, reference_captions
from .faults import FAULTS
from .graph import DEFAULT_SIZES, Scene, generate_scene
from .render import render
from .variants import png

DEFAULT_BASE_URL = "http://127.0.0.1:8765"


@dataclass
class CorpusConfig:
    n: int = 100  # input rows (URLs)
    seed: int = 0  # everything is deterministic for a seed
    base_url: str = DEFAULT_BASE_URL  # where `deepfusion scenes serve` will listen
    faults: float = 0.0  # fraction of rows that get a fault, cycling through `fault_names`
    fault_names: list[str] = field(default_factory=lambda: sorted(FAULTS))
    duplicates: float = 0.0  # fraction of rows that are byte-identical copies of an earlier ok row
    near_duplicates: float = 0.0  # fraction that are JPEG re-encodes of an earlier ok row
    sizes: list[tuple[int, int] | str] = field(default_factory=lambda: list(DEFAULT_SIZES))  # [W, H] or "WxH"
    text_probability: float = 0.3  # chance a scene contains a word
    object_sizes: list[str] = field(default_factory=lambda: ["small", "medium", "large"])  # names in graph.SIZES
    max_groups: int = 3  # 1..3 groups of same-coloured shapes per scene (1: one colour per image)
    max_count: int = 4  # 1..4 shapes per group (1 with max_groups=1: one shape per image)

    def __post_init__(self):
        self.sizes = [tuple(int(v) for v in s.lower().split("x")) if isinstance(s, str) else tuple(s)
                      for s in self.sizes]
        if not 1 <= self.max_groups <= 3:
            raise ValueError(f"max_groups must be 1, 2 or 3, got {self.max_groups}")
        if not 1 <= self.max_count <= 4:
            raise ValueError(f"max_count must be 1..4, got {self.max_count}")


def _row_kinds(cfg: CorpusConfig, rng: random.Random) -> list[tuple[str, str | None]]:
    n_fault = round(cfg.n * cfg.faults)
    n_dup = round(cfg.n * cfg.duplicates)
    n_near = round(cfg.n * cfg.near_duplicates)
    n_ok = cfg.n - n_fault - n_dup - n_near
    if n_ok < 1 or min(n_fault, n_dup, n_near) < 0:
        raise ValueError("faults + duplicates + near_duplicates must leave at least one ok row")
    unknown = sorted(set(cfg.fault_names) - set(FAULTS))
    if unknown:
        raise ValueError(f"unknown fault(s) {unknown}; known: {sorted(FAULTS)}")
    kinds = [("fault", cfg.fault_names[i % len(cfg.fault_names)]) for i in range(n_fault)]
    kinds += [("duplicate", None)] * n_dup + [("near_duplicate", None)] * n_near
    rng.shuffle(kinds)
    # the first row is always ok, so every duplicate can point back to an earlier ok row
    body = [("ok", None)] * (n_ok - 1) + kinds
    rng.shuffle(body)
    return [("ok", None)] + body


def make_corpus(out: str | Path, cfg: CorpusConfig, progress: bool = True) -> dict:
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    base = cfg.base_url.rstrip("/")
    rng = random.Random(cfg.seed)
    kinds = _row_kinds(cfg, rng)
    ok_rows: list[int] = []
    rows, truth = [], []
    scenes: dict[str, Scene] = {}
    for i, (kind, fault) in enumerate(tqdm(kinds, desc="scenes", unit="row", disable=not progress)):
        dup_of = None
        if kind in ("duplicate", "near_duplicate"):
            dup_of = rng.choice(ok_rows)
            scene = scenes[truth[dup_of]["scene_id"]]
        else:
            scene_id = f"s{cfg.seed:04d}{i:07d}"
            size = tuple(cfg.sizes[rng.randrange(len(cfg.sizes))])
            scene = generate_scene(scene_id, rng.getrandbits(48), size, cfg.text_probability, cfg.max_groups,
                                   tuple(cfg.object_sizes), cfg.max_count)
            scenes[scene_id] = scene
            (out / "images" / f"{scene_id}.png").write_bytes(png(render(scene)))
        sid = scene.id
        if kind == "ok":
            url, expect = f"{base}/images/{sid}.png", "sample"
            ok_rows.append(i)
        elif kind == "fault":
            url, expect = f"{base}/fault/{fault}/{sid}.{FAULTS[fault].ext}", FAULTS[fault].expect
        elif kind == "duplicate":
            url, expect = f"{base}/dup/{i}/{sid}.png", "dedup"
        else:
            url, expect = f"{base}/near/{i}/{sid}.jpg", "dedup"
        alt = alt_text(scene)
        rows.append({"URL": url, "TEXT": alt, "WIDTH": scene.width, "HEIGHT": scene.height, "scene_id": sid})
        truth.append(
            {
                "row": i,
                "scene_id": sid,
                "url": url,
                "kind": kind,
                "fault": fault,
                "expect": expect,
                "duplicate_of": dup_of,
                "alt": alt,
                "width": scene.width,
                "height": scene.height,
                "scene": scene.to_json(),
                **dict(zip(LEVEL_COLUMNS, reference_captions(scene))),
            }
        )
    pq.write_table(pa.Table.from_pylist(rows), out / "urls.parquet")
    pq.write_table(pa.Table.from_pylist(truth), out / "ground_truth.parquet")
    summary = {
        "config": asdict(cfg),
        "rows": len(rows),
        "scenes": len(scenes),
        "expect": {k: sum(1 for t in truth if t["expect"] == k) for k in sorted({t["expect"] for t in truth})},
    }
    (out / "corpus.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def load_corpus_info(folder: str | Path) -> dict:
    path = Path(folder) / "corpus.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {folder} a corpus made by `deepfusion scenes make`?")
    return json.loads(path.read_text())
