"""Dedup across the whole dataset as a distributed, deterministic index.

    index.py    one partition's exact/near-duplicate indexes (a dict for sha256, faiss for the rest)
    service.py  the partitions as Ray actors: start, parallel rebuild from committed sidecars,
                the input-order gate, inserts; and the client a shard task uses
    decide.py   one shard's verdicts: index matches plus duplicates within the shard, in input order

A row is a duplicate when it is the same bytes (sha256), or a near duplicate (perceptual-hash
Hamming distance, CLIP-embedding cosine) of a sample kept earlier in input order; its reject
names the kept key. Rows are owned by partition (sha256 of the bytes) mod P, so memory per actor
is bounded by P; exact lookups go to the owner, near-duplicate queries to every partition.
"""

from .decide import Verdict, decide
from .index import PartitionIndex, order_of, key_of
from .service import DedupService
