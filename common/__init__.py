"""The bottom floor: small helpers every package may import (and that import none of ours)."""
