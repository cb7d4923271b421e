"""What a model may know about the items: their count, training popularity and frozen content features."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ItemCatalog:
    num_items: int  # N; item indices are 1..N, 0 is padding
    max_seq_len: int  # longest input sequence a model reads (data.max_seq_len); sizes positional embeddings
    popularity: torch.Tensor  # (N+1,) float32 training-interaction counts (row 0 = 0)
    # modality name ("text", "image") -> (N+1, d) float32 pooled features; row 0 zeros
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    # modality -> (N+1,) bool, True where the item really has that modality (row 0 False)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    # modality -> (N+1, T, d) float16 per-token features, and (N+1, T) bool token masks (ODMT)
    tokens: dict[str, torch.Tensor] = field(default_factory=dict)
    token_masks: dict[str, torch.Tensor] = field(default_factory=dict)
