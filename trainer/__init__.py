"""DeepSpeed training of the deep-fusion DiT on committed shards (see trainer/train.py)."""
