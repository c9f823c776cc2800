"""Curation filter stages over ROW_SCHEMA batches: decode (validity, modes, size) and CLIP (scores, heads)."""
