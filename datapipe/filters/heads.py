"""Score heads on the CLIP image embedding: aesthetic, NSFW, watermark (weights from local files).

A head file is safetensors with tensors `0.weight`, `0.bias`, `1.weight`, ... (a stack of linear
layers) and metadata `hidden_activation` (relu | none), `output_activation` (none | sigmoid) and
`normalize` (true: the input embedding is L2-normalised first). The LAION aesthetic predictor (a
linear stack without activations over a normalised embedding) and the LAION safety/watermark
heads convert to this layout by renaming their linear layers' tensors in order.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class ScoreHead(torch.nn.Module):
    def __init__(self, layers: list[torch.nn.Linear], hidden_activation: str = "relu",
                 output_activation: str = "none", normalize: bool = True):
        super().__init__()
        self.layers = torch.nn.ModuleList(layers)
        self.hidden_activation = hidden_activation
        self.output_activation = output_activation
        self.normalize = normalize

    @property
    def in_features(self) -> int:
        return self.layers[0].in_features

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        x = embedding.float()
        if self.normalize:
            x = torch.nn.functional.normalize(x, dim=-1)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1 and self.hidden_activation == "relu":
                x = torch.relu(x)
        x = x.squeeze(-1)
        return torch.sigmoid(x) if self.output_activation == "sigmoid" else x


def load_head(path: str | Path) -> ScoreHead:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"score head weights {path} not found (a local safetensors file is required)")
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    layers = []
    i = 0
    while f"{i}.weight" in tensors:
        weight = tensors[f"{i}.weight"]
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0])
        layer.load_state_dict({"weight": weight, "bias": tensors[f"{i}.bias"]})
        layers.append(layer)
        i += 1
    if not layers or layers[-1].out_features != 1:
        raise ValueError(f"{path}: a score head needs linear layers 0.weight, 0.bias, ... ending in one output")
    return ScoreHead(layers, meta.get("hidden_activation", "relu"), meta.get("output_activation", "none"),
                     meta.get("normalize", "true") == "true").eval()


def save_head(path: str | Path, head: ScoreHead) -> None:
    tensors = {}
    for i, layer in enumerate(head.layers):
        tensors[f"{i}.weight"] = layer.weight.detach().contiguous()
        tensors[f"{i}.bias"] = layer.bias.detach().contiguous()
    save_file(tensors, str(path), metadata={"hidden_activation": head.hidden_activation,
                                            "output_activation": head.output_activation,
                                            "normalize": str(head.normalize).lower()})


def random_head(in_features: int, hidden: int = 32, output_activation: str = "sigmoid", seed: int = 0) -> ScoreHead:
    """A randomly initialised head (tests and examples only)."""
    g = torch.Generator().manual_seed(seed)
    layers = [torch.nn.Linear(in_features, hidden), torch.nn.Linear(hidden, 1)]
    with torch.no_grad():
        for layer in layers:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) / layer.in_features**0.5)
            layer.bias.zero_()
    return ScoreHead(layers, "relu", output_activation, True).eval()
