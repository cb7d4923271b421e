"""What a model may know about the items: their count, training popularity and frozen content features."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ItemCatalog:
    num_items: int  # N; item indices are 1..N, 0 is padding
    # longest input sequence (data.max_seq_len, or the longest in the data): a model built without its own
    # max_seq_len argument (registry.build_model always passes one) reads this many positions
    max_seq_len: int
    popularity: torch.Tensor  # (N+1,) float32 training-interaction counts (row 0 = 0)
    # modality name ("text", "image") -> (N+1, d) float32 pooled features; row 0 zeros
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    # modality -> (N+1,) bool, True where the item really has that modality (row 0 False)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    # modality -> (N+1, T, d) float16 per-token features, and (N+1, T) bool token masks (ODMT)
    tokens: dict[str, torch.Tensor] = field(default_factory=dict)
    token_masks: dict[str, torch.Tensor] = field(default_factory=dict)
