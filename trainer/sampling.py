"""Images from a trained DiT: sample grids during training and `deepfusion sample` afterwards.

A checkpoint's `ema/` folder (safetensors + config.json) and `inference.json` are everything
needed: the text encoder, codec and EDM settings are read from there, the weights are the EMA's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from model import EDM, DeepFusionDiT, FrozenTextEncoder, build_codec, encode_for
from model.config import CodecConfig, EDMConfig, TextEncoderConfig


@dataclass
class Pipeline:
    dit: DeepFusionDiT
    encoders: list[FrozenTextEncoder]  # one per LLM branch the DiT reads
    codec: object
    edm: EDM
    resolution: tuple[int, int]  # default (height, width) in pixels
    device: torch.device

    @torch.no_grad()
    def generate(self, prompts: list[str], seeds: list[int], steps: int = 32, guidance: float = 3.0,
                 size: tuple[int, int] | None = None, batch: int = 16) -> torch.Tensor:
        """One image per (prompt, seed) pair, in [-1, 1], [N, 3, H, W]; deterministic per seed."""
        h, w = size or self.resolution
        factor = self.codec.factor
        shape = (self.codec.channels, h // factor, w // factor)
        out = []
        for start in range(0, len(prompts), batch):
            p, s = prompts[start : start + batch], seeds[start : start + batch]
            cond, uncond = encode_for(self.dit, self.encoders, p), encode_for(self.dit, self.encoders, [""] * len(p))
            # each image gets its own generator: the result does not depend on batching
            noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(seed))) for seed in s])
            x = self.edm.sample(self.dit, noise.shape, ([t.hidden for t in cond], [t.mask for t in cond]),
                                ([t.hidden for t in uncond], [t.mask for t in uncond]),
                                steps=steps, guidance=guidance, device=self.device, noise=noise)
            out.append(self.codec.decode(x).clamp(-1, 1).cpu())
        return torch.cat(out)


def load_pipeline(checkpoint: str | Path, device: str | None = None) -> Pipeline:
    """From a checkpoint folder (step_XXXXXXXX) or a run dir (its latest checkpoint)."""
    path = Path(checkpoint)
    if (path / "checkpoints" / "latest").exists():
        path = path / "checkpoints" / (path / "checkpoints" / "latest").read_text().strip()
    if not (path / "inference.json").exists():
        raise FileNotFoundError(f"{path} is not a deepfusion checkpoint (no inference.json); pass a run dir or "
                                "a checkpoints/step_* folder")
    info = json.loads((path / "inference.json").read_text())
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dit = DeepFusionDiT.from_pretrained(str(path / "ema")).to(dev).eval()
    encoders = [FrozenTextEncoder(TextEncoderConfig(**info[key]), device=dev)
                for key in ("text_encoder", "text_encoder_2") if key in info]
    codec = build_codec(CodecConfig(**info["codec"]), device=dev)
    return Pipeline(dit, encoders, codec, EDM(EDMConfig(**info["edm"])), tuple(info["resolution"]), dev)


def to_pil(image: torch.Tensor) -> Image.Image:
    arr = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(arr)


def save_grid(images: torch.Tensor, rows: int, cols: int, path: str | Path, pad: int = 2,
              labels: list[str] | None = None, row_labels: list[str] | None = None, min_cell: int = 128) -> Path:
    """Images (row-major) into one PNG grid. Small images are enlarged (nearest neighbour, whole
    multiples) to about `min_cell` pixels so that a person can see them; `labels` puts a text under
    each image, `row_labels` one under each row (e.g. the prompt a row of seeds was drawn for)."""
    from PIL import ImageDraw, ImageFont

    h, w = images.shape[-2:]
    zoom = max(1, min_cell // max(h, w))
    cw, ch = w * zoom, h * zoom
    font = ImageFont.load_default()
    chars = max(8, (cw - 4) // 6)  # the default bitmap font is ~6 px wide
    line_h = 11

    def wrap(text: str, width: int) -> list[str]:
        lines, cur = [], ""
        for word in text.split():
            if cur and len(cur) + 1 + len(word) > width:
                lines.append(cur)
                cur = word
            else:
                cur = f"{cur} {word}".strip()
        return [*lines, cur][:4] if cur or lines else []

    cell_text = [wrap(t, chars) for t in labels] if labels else []
    row_chars = max(8, (cols * (cw + pad) - 4) // 6)
    row_text = [wrap(t, row_chars) for t in row_labels] if row_labels else []
    under_cell = (max((len(t) for t in cell_text), default=0) * line_h + 2) if cell_text else 0
    under_row = (max((len(t) for t in row_text), default=0) * line_h + 2) if row_text else 0
    row_h = ch + under_cell + under_row + pad
    grid = Image.new("RGB", (cols * (cw + pad) + pad, rows * row_h + pad), (128, 128, 128))
    draw = ImageDraw.Draw(grid)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        x, y = pad + c * (cw + pad), pad + r * row_h
        grid.paste(to_pil(image).resize((cw, ch), Image.NEAREST), (x, y))
        for k, text in enumerate(cell_text[i] if i < len(cell_text) else []):
            draw.text((x + 1, y + ch + 1 + k * line_h), text, fill=(255, 255, 255), font=font)
    for r, lines in enumerate(row_text[:rows]):
        for k, text in enumerate(lines):
            draw.text((pad + 1, pad + r * row_h + ch + under_cell + 1 + k * line_h), text, fill=(255, 255, 255), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    grid.save(tmp, format="PNG")
    tmp.replace(path)
    return path
