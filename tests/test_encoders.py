"""Frozen encoders: real packaged weights (minilm, efficientnet_lite0), tiny local HF / open_clip checkpoints, and the
offline hub handling (against a loopback server and an unreachable endpoint, never the internet)."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib import cbook
from PIL import Image

from pipeline.config import EncoderConfig
from pipeline.features.encoders import (
    EncoderError,
    build_encoder,
    hub_reachable,
    pool_spatial_tokens,
    resolve_device,
    to_rgb,
    token_grid,
)
from tests.helpers.encoders import TINY_CLIP, make_tiny_bert, make_tiny_clip, register_tiny_clip

CPU = torch.device("cpu")


def enc_config(name: str, checkpoint: str | None = None, arch: str | None = None, max_tokens: int = 8) -> EncoderConfig:
    return EncoderConfig(name=name, checkpoint=checkpoint, arch=arch, batch_size=4, max_tokens=max_tokens)


def images_of_every_mode() -> list[Image.Image]:
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))  # fully transparent
    palette = Image.new("P", (30, 40), 3)
    return [
        Image.new("RGB", (300, 200), (10, 200, 30)),
        Image.new("L", (64, 64), 128),
        rgba,
        Image.new("CMYK", (50, 50), (0, 255, 255, 0)),
        palette,
        Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16)),
    ]


# --- helpers ---------------------------------------------------------------------------------------------------


def test_to_rgb_handles_every_mode_and_composites_alpha_on_white() -> None:
    converted = [to_rgb(im) for im in images_of_every_mode()]
    assert all(im.mode == "RGB" for im in converted)
    assert converted[2].getpixel((0, 0)) == (255, 255, 255)  # transparent -> white, not black


def test_token_grid_is_square_bounded_and_never_upsamples() -> None:
    assert token_grid(16, 7, 7) == (4, 4)
    assert token_grid(10, 7, 7) == (3, 3)
    assert token_grid(64, 7, 7) == (7, 7)
    assert token_grid(1, 7, 7) == (1, 1)
    tokens = pool_spatial_tokens(torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4), 4)
    assert tokens.shape == (2, 4, 3)
    assert torch.allclose(tokens.mean(dim=1), torch.arange(96.0).reshape(2, 3, 16).mean(-1))


def test_registry_and_device_errors_name_the_param() -> None:
    assert build_encoder(enc_config("none"), "image", CPU) is None
    with pytest.raises(EncoderError, match=r"embed\.image\.name = 'resnet' must be one of: efficientnet_lite0, clip"):
        build_encoder(enc_config("resnet"), "image", CPU)
    with pytest.raises(EncoderError, match=r"embed\.device = 'gpu' must be one of"):
        resolve_device("gpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(EncoderError, match=r"embed\.device = 'cuda' but torch sees no CUDA device"):
            resolve_device("cuda")


# --- real packaged weights ---------------------------------------------------------------------------------------


def test_minilm_embeds_similar_titles_closer_and_is_batch_independent() -> None:
    encoder = build_encoder(enc_config("minilm", max_tokens=32), "text", CPU)
    texts = [
        "Toy Story (1995) Animation|Children's|Comedy",
        "Toy Story 2 (1999) Animation|Children's|Comedy",
        "Saving Private Ryan (1998) Action|Drama|War",
        "Platoon (1986) Drama|War",
    ]
    out = encoder.encode(texts, want_tokens=True)
    assert out.pooled.shape == (4, 384)
    assert torch.allclose(out.pooled.norm(dim=-1), torch.ones(4), atol=1e-5)
    sim = out.pooled @ out.pooled.T  # (4, 4) cosine
    assert sim[0, 1] > sim[0, 2] + 0.1 and sim[0, 1] > sim[0, 3] + 0.1
    assert sim[2, 3] > sim[2, 0] and sim[2, 3] > sim[2, 1]
    assert out.tokens.shape == (4, 32, 384) and out.token_mask.shape == (4, 32)
    assert out.token_mask[:, 0].all() and not out.token_mask[:, -1].any()  # short titles are padded
    assert (out.tokens[~out.token_mask] == 0).all()
    single = encoder.encode(texts[2:3], want_tokens=False)
    assert torch.allclose(single.pooled[0], out.pooled[2], atol=1e-5)  # same vector whatever the batch


def test_efficientnet_real_forward_gives_imagenet_class_and_tokens() -> None:
    encoder = build_encoder(enc_config("efficientnet_lite0", max_tokens=16), "image", CPU)
    photo = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    pixels = torch.stack([encoder.preprocess(im) for im in [photo, *images_of_every_mode()]])
    assert pixels.shape == (7, 3, 224, 224)
    out = encoder.encode(pixels, want_tokens=True)
    assert out.pooled.shape == (7, 1280) and out.tokens.shape == (7, 16, 1280) and out.token_mask.all()
    with torch.inference_mode():
        logits = encoder.model._fc(out.pooled[:1])  # the packaged ImageNet head on our pooled feature
    assert int(logits.argmax()) == 652  # "military uniform": the preprocessing matches the weights
    again = encoder.encode(pixels[:2], want_tokens=False)
    assert torch.allclose(again.pooled, out.pooled[:2], atol=1e-4)


# --- tiny local checkpoints --------------------------------------------------------------------------------------


def test_hf_encoder_on_tiny_local_checkpoint(tmp_path: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    directory = make_tiny_bert(tmp_path / "bert")
    encoder = build_encoder(enc_config("hf", checkpoint=str(directory), max_tokens=8), "text", CPU)
    assert encoder.describe()["checkpoint_source"] == "local"
    texts = ["toy story", "heat of the war and love and drama and action and comedy"]
    out = encoder.encode(texts, want_tokens=True)

    tok, model = AutoTokenizer.from_pretrained(directory), AutoModel.from_pretrained(directory).eval()
    with torch.no_grad():
        hidden = model(**tok(texts[:1], return_tensors="pt")).last_hidden_state[0]  # (L, 16)
    expected = F.normalize(hidden.mean(dim=0), dim=-1)
    assert torch.allclose(out.pooled[0], expected, atol=1e-5)
    assert out.tokens.shape == (2, 8, 16)
    assert out.token_mask[0].tolist() == [True] * 4 + [False] * 4  # [CLS] toy story [SEP]
    assert out.token_mask[1].all()  # truncated at max_tokens


def test_clip_encoders_on_tiny_local_checkpoint(tmp_path: Path) -> None:
    import open_clip

    checkpoint = make_tiny_clip(tmp_path)
    reference = open_clip.create_model(TINY_CLIP, pretrained=str(checkpoint)).eval()

    image_enc = build_encoder(enc_config("clip", str(checkpoint), TINY_CLIP, max_tokens=4), "image", CPU)
    image_enc.load()
    pixels = torch.stack([image_enc.preprocess(im) for im in images_of_every_mode()[:3]])
    assert pixels.shape == (3, 3, 32, 32)
    out = image_enc.encode(pixels, want_tokens=True)
    with torch.no_grad():
        expected = reference.encode_image(pixels, normalize=True)
    assert torch.allclose(out.pooled, expected, atol=1e-5)
    assert out.tokens.shape == (3, 4, 32)  # 4x4 patch grid pooled to 2x2, ViT width 32
    assert torch.allclose(image_enc.encode(pixels, want_tokens=False).pooled, out.pooled, atol=1e-5)

    text_enc = build_encoder(enc_config("clip", str(checkpoint), TINY_CLIP, max_tokens=6), "text", CPU)
    texts = ["a photo of a toy", "war"]
    out = text_enc.encode(texts, want_tokens=True)
    ids = open_clip.get_tokenizer(TINY_CLIP)(texts)
    with torch.no_grad():
        expected = reference.encode_text(ids, normalize=True)
    assert torch.allclose(out.pooled, expected, atol=1e-5)
    assert out.tokens.shape == (2, 6, 32)
    assert out.token_mask.tolist() == (ids[:, :6] != 0).tolist()
    assert out.token_mask[1].tolist() == [True, True, True, False, False, False]  # <sot> war <eot>


def test_clip_config_errors_name_the_param(tmp_path: Path) -> None:
    register_tiny_clip(tmp_path)
    with pytest.raises(EncoderError, match=r"embed\.image\.arch is null"):
        build_encoder(enc_config("clip", "openai"), "image", CPU)
    with pytest.raises(EncoderError, match=r"embed\.text\.checkpoint = 'nonsense' is neither .* tags: openai"):
        build_encoder(enc_config("clip", "nonsense", "ViT-B-32"), "text", CPU)
    with pytest.raises(EncoderError, match=r"embed\.image\.checkpoint = '/no/such/file.pt': no such file"):
        build_encoder(enc_config("clip", "/no/such/file.pt", TINY_CLIP), "image", CPU)


# --- hub / offline -----------------------------------------------------------------------------------------------


@pytest.fixture
def loopback_server() -> Iterator[str]:
    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:  # noqa: N802 (http.server API)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more: connection refused


def test_hub_probe_loopback_and_unreachable(loopback_server: str) -> None:
    assert hub_reachable(loopback_server, timeout=2)  # any HTTP answer, even 404, means the network works
    start = time.perf_counter()
    assert not hub_reachable(closed_port_url(), timeout=2)  # connection refused
    with socket.socket() as silent:  # accepts connections (backlog) but never answers: the probe times out
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        assert not hub_reachable(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5)
    assert time.perf_counter() - start < 3


@pytest.mark.parametrize("offline_env", [False, True])
def test_hf_hub_name_fails_fast_offline(monkeypatch: pytest.MonkeyPatch, offline_env: bool) -> None:
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    if offline_env:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    encoder = build_encoder(enc_config("hf", checkpoint="no-such-org/tiny-bert-xyz"), "text", CPU)
    assert encoder.describe()["checkpoint_source"] == "hub"
    start = time.perf_counter()
    with pytest.raises(EncoderError) as info:
        encoder.encode(["toy story"], want_tokens=False)
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert "embed.text.checkpoint = 'no-such-org/tiny-bert-xyz'" in message
    assert ("HF_HUB_OFFLINE=1" if offline_env else "did not answer") in message
    assert "set embed.text.checkpoint to its path" in message


def test_clip_pretrained_tag_fails_fast_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    encoder = build_encoder(enc_config("clip", "laion2b_s34b_b79k", "ViT-B-32"), "image", CPU)
    start = time.perf_counter()
    with pytest.raises(EncoderError) as info:
        encoder.load()
    assert time.perf_counter() - start < 10
    assert "embed.image.checkpoint = 'laion2b_s34b_b79k' is a pretrained tag" in str(info.value)
    assert "set embed.image.checkpoint to its path" in str(info.value)


def test_missing_local_paths_are_not_mistaken_for_hub_names() -> None:
    with pytest.raises(EncoderError, match=r"embed\.text\.checkpoint = './models/bert': no such directory"):
        build_encoder(enc_config("hf", checkpoint="./models/bert"), "text", CPU)
    with pytest.raises(EncoderError, match=r"embed\.image\.checkpoint = 'weights.pth': no such file"):
        build_encoder(enc_config("efficientnet_lite0", checkpoint="weights.pth"), "image", CPU)
    with pytest.raises(EncoderError, match=r"embed\.text\.checkpoint is null"):
        build_encoder(enc_config("hf"), "text", CPU)
