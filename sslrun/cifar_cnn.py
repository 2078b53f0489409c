"""`cifar_cnn`: a small plain CNN for 32-pixel images, registered in timm's model registry.

Why it exists: timm's small models (`test_resnet` and kin) downsample by 32 before their
head, so a CIFAR-sized image ends as a single pixel. On bench/accuracy.py's CPU budget,
FixMatch on `test_resnet` stalled at the supervised accuracy (pseudo-labels over 0.95 were
right only about half the time). This net keeps the full 32x32 grid in its first two layers
and halves it three times (32 -> 16 -> 8 -> 4), at 75k parameters: about 0.6x the images per
second of `test_resnet` on one CPU core, and better features per step.

Registering it with timm means `model=cifar_cnn` goes through the same `timm.create_model`
path as every other backbone (freezing, `get_classifier`, normalisation from its config).
"""

from __future__ import annotations

from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class CifarCNN(nn.Module):
    """A 3x3 stem, then per stage: conv, 2x2 max-pool, conv; global average pool; linear head."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, widths: tuple[int, ...] = (16, 32, 64), stem: int = 16,
                 **kwargs: Any) -> None:
        super().__init__()
        layers = _conv_bn_relu(in_chans, stem)
        cin = stem
        for width in widths:
            layers += [*_conv_bn_relu(cin, width), nn.MaxPool2d(2), *_conv_bn_relu(width, width)]
            cin = width
        self.features = nn.Sequential(*layers)
        self.num_features = cin
        self.num_classes = num_classes
        self.head = nn.Linear(cin, num_classes) if num_classes > 0 else nn.Identity()
        self.pretrained_cfg = self.default_cfg = {
            "architecture": "cifar_cnn", "input_size": (in_chans, 32, 32), "num_classes": num_classes,
            "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD, "interpolation": "bilinear",
            "crop_pct": 1.0, "first_conv": "features.0", "classifier": "head",
        }

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


_CFG = {"num_classes": 10, "input_size": (3, 32, 32), "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "interpolation": "bilinear", "crop_pct": 1.0, "first_conv": "features.0", "classifier": "head"}
default_cfgs = generate_default_cfgs({
    # No hosted weights: `pretrained=FILE` (timm's pretrained_cfg_overlay=dict(file=...)) only.
    "cifar_cnn": dict(_CFG),
    "cifar_cnn_wide": dict(_CFG),
    "cifar_cnn_wider": dict(_CFG),
})


@register_model
def cifar_cnn(pretrained: bool = False, **kwargs: Any) -> CifarCNN:
    """Built by timm's own builder, so a weights file loads as for any timm model (head dropped
    when the class count differs)."""
    return build_model_with_cfg(CifarCNN, "cifar_cnn", pretrained, **kwargs)


@register_model
def cifar_cnn_wide(pretrained: bool = False, **kwargs: Any) -> CifarCNN:
    """Twice the channels of `cifar_cnn` (32/64/128, 0.29M parameters, 4x the multiply-adds). Why
    a second size: where the CPU has bf16 units, bf16 autocast makes this net's step 2.4x cheaper
    and the small one's only 1.35x, so the wide net costs 1.8x the small one's step there, not 3.3x."""
    return build_model_with_cfg(CifarCNN, "cifar_cnn_wide", pretrained, widths=(32, 64, 128), **kwargs)


@register_model
def cifar_cnn_wider(pretrained: bool = False, **kwargs: Any) -> CifarCNN:
    """1.5x the channels of `cifar_cnn_wide` (48/96/192, 0.65M parameters, 2.2x its multiply-adds).
    Why a third size: the weak view forwarded without gradients (`extra.weak_pass=no_grad|ema`)
    made the wide net's step 1.8x cheaper, about what this net's extra multiply-adds cost, so it is
    the next size to try at the same step count (bench/RESULTS-accuracy.md says whether it was)."""
    return build_model_with_cfg(CifarCNN, "cifar_cnn_wider", pretrained, widths=(48, 96, 192), stem=24, **kwargs)
