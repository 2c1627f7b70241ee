"""The benchmark mixture: sample shapes like an InternVL fine-tuning mixture's.

The recipe's data (ShareGPT4V captions, DocVQA / ChartQA / AI2D question answering, LLaVA
conversations, pure-text instruction data) mixes 1-tile and 13-tile images (max_dynamic_patch
12 plus the thumbnail) and short and long answers. The kinds below, with their shares, give
that spread; the figures are per sample at the recipe's scale (448 px tiles of 256 tokens).
``bench/train_speed.py`` trains on it and the packing tests plan packs on it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# kind: (share, tile counts to draw from, text tokens low, high)
KINDS: dict[str, tuple[float, tuple[int, ...], int, int]] = {
    "text-only instruction": (0.15, (0,), 80, 1500),
    "single tile, short answer": (0.30, (1,), 40, 250),
    "document / chart QA": (0.30, (3, 5, 7, 9, 13), 40, 300),
    "detailed caption": (0.25, (5, 7, 9, 13), 250, 900),
}


@dataclass(frozen=True)
class Shape:
    kind: str
    tiles: int
    text_tokens: int

    def tokens(self, tokens_per_tile: int = 256) -> int:
        """Sequence length: the image span (<img>, tiles x tokens, </img>) plus the text."""
        return self.text_tokens + (self.tiles * tokens_per_tile + 2 if self.tiles else 0)


def shapes(n: int, seed: int = 0) -> list[Shape]:
    rng = random.Random(seed)
    kinds = list(KINDS)
    weights = [KINDS[k][0] for k in kinds]
    out = []
    for _ in range(n):
        kind = rng.choices(kinds, weights)[0]
        _, tiles, low, high = KINDS[kind]
        out.append(Shape(kind, rng.choice(tiles), rng.randint(low, high)))
    return out
