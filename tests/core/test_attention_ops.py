"""Two ops real models use (issue 21): ConvNeXt's channels-last ``LayerNorm2d`` (``F.layer_norm``
with parameter weight and bias passed by keyword) and ``nn.MultiheadAttention`` as
self-attention (ViT's spelling). Each is sound at sampled points of a box and exact on a
degenerate box in every built-in domain; what has no rule is refused naming the module."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from core_helpers import DTYPE, box
from core_helpers import assert_sound_and_exact as _sound_and_exact

import absdsl
from absdsl.domains import NAMES as DOMAINS
from absdsl.errors import TraceError


class LayerNorm2d(nn.LayerNorm):
    """torchvision ConvNeXt's LayerNorm2d: a layer norm over the channels of an image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtStem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.conv = nn.Conv2d(2, 3, 1)
        self.norm = LayerNorm2d(3)
        with torch.no_grad():  # weight and bias away from their 1 and 0 defaults
            self.norm.weight.uniform_(-2.0, 2.0)
            self.norm.bias.uniform_(-1.0, 1.0)
        self.to(DTYPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class SelfAttention(nn.Module):
    """ViT's encoder block spelling: ``attn(x, x, x, need_weights=False)[0]``."""

    def __init__(self, need_weights: bool = False, bias: bool = True) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True, bias=bias)
        self.need_weights = need_weights
        self.to(DTYPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.attn(x, x, x, need_weights=self.need_weights)[0]
        return torch.relu(out) + x


@pytest.mark.parametrize("domain", DOMAINS)
def test_layer_norm_2d_sound_and_exact(domain: str) -> None:
    _sound_and_exact(ConvNeXtStem().eval(), domain, (2, 3, 3), 0.05)


def test_torchvision_layer_norm_2d_matches() -> None:
    convnext = importlib.import_module("torchvision.models.convnext")
    model = nn.Sequential(nn.Conv2d(2, 3, 1), convnext.LayerNorm2d(3)).to(DTYPE).eval()
    x = box((2, 3, 3), batch=2, eps=0.0, seed=3)[0]
    lb, ub = absdsl.compile(model, "deeppoly")(x, x.clone())
    with torch.no_grad():
        torch.testing.assert_close(lb, model(x), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(ub, model(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("domain", DOMAINS)
def test_self_attention_sound_and_exact(domain: str) -> None:
    _sound_and_exact(SelfAttention().eval(), domain, (3, 4), 0.1)


@pytest.mark.parametrize("domain", ["box", "deeppoly"])
def test_self_attention_without_bias_and_default_weights(domain: str) -> None:
    _sound_and_exact(SelfAttention(need_weights=True, bias=False).eval(), domain, (3, 4), 0.1)


class CrossAttention(nn.Module):
    def __init__(self, **kwargs: object) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, **kwargs).to(DTYPE)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x * 2.0, x, need_weights=False)[0]


class Masked(SelfAttention):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False, is_causal=True,
                         attn_mask=nn.Transformer.generate_square_subsequent_mask(3))[0]


class ReadsWeights(SelfAttention):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, weights = self.attn(x, x, x)
        return out + weights.sum()


@pytest.mark.parametrize(("model", "message"), [
    (CrossAttention(batch_first=True), "self-attention only"),
    (Masked(), "with a mask"),
    (ReadsWeights(), "attention weights"),
])
def test_attention_refusals_name_the_module(model: nn.Module, message: str) -> None:
    with pytest.raises(TraceError, match=message) as info:
        absdsl.compile(model.eval(), "box")(*box((3, 4), batch=1))
    assert "attn" in str(info.value)


def test_attention_sequence_first_is_refused() -> None:
    class SequenceFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(4, 2).to(DTYPE)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x, x, x, need_weights=False)[0]

    with pytest.raises(TraceError, match="batch_first=False") as info:
        absdsl.compile(SequenceFirst().eval(), "box")(*box((3, 4), batch=1))
    assert "attn" in str(info.value)


def _torchvision_models() -> dict[str, nn.Module]:
    """Small configurations of torchvision's ViT and ConvNeXt (their public classes)."""
    vision_transformer = importlib.import_module("torchvision.models.vision_transformer")
    convnext = importlib.import_module("torchvision.models.convnext")
    torch.manual_seed(6)
    vit = vision_transformer.VisionTransformer(image_size=8, patch_size=4, num_layers=1,
                                               num_heads=2, hidden_dim=8, mlp_dim=8,
                                               num_classes=3)
    nn.init.normal_(vit.heads.head.weight)  # torchvision starts the head at zero
    nn.init.normal_(vit.heads.head.bias)
    blocks = [convnext.CNBlockConfig(4, 8, 1), convnext.CNBlockConfig(8, None, 1)]
    return {"vit": vit, "convnext": convnext.ConvNeXt(blocks, num_classes=3)}


@pytest.mark.parametrize("name", ["vit", "convnext"])
@pytest.mark.parametrize("domain", ["box", "deeppoly"])
def test_torchvision_vit_and_convnext_sound_and_exact(name: str, domain: str) -> None:
    model = _torchvision_models()[name].to(DTYPE).eval()
    _sound_and_exact(model, domain, (3, 8, 8), 0.002)
