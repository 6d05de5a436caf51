"""Architectures the worker can build, each with its Grad-CAM target layer and output shape.

Every entry yields a module whose ``forward`` returns logits ``(B, C, H, W)``: torchvision's
segmentation models return a dict and carry an auxiliary head that Grad-CAM never needs,
so they are wrapped and the head is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from worker.archs.shapes_unet import ShapesUNet
from worker.weights import mismatch


class SegmentationOutput(nn.Module):
    """Unwrap torchvision's ``{"out": ..., "aux": ...}`` to the logits tensor."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


@dataclass(frozen=True)
class Arch:
    build: Callable[..., nn.Module]  # (num_classes, aux, **kwargs) -> bare network
    target_layer: str  # dotted path inside the bare network
    wraps_dict_output: bool


def _torchvision(fn_name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, aux: bool = False, **kwargs) -> nn.Module:
        from torchvision.models import segmentation

        fn = getattr(segmentation, fn_name)
        return fn(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=aux, **kwargs)

    return build


def _shapes_unet(num_classes: int, aux: bool = False, **kwargs) -> nn.Module:
    return ShapesUNet(num_classes=num_classes, **kwargs)


ARCHS: dict[str, Arch] = {
    "shapes_unet": Arch(_shapes_unet, "dec1", wraps_dict_output=False),
    "deeplabv3_mobilenet_v3_large": Arch(_torchvision("deeplabv3_mobilenet_v3_large"), "backbone.16", True),
    "deeplabv3_resnet50": Arch(_torchvision("deeplabv3_resnet50"), "backbone.layer4", True),
    "fcn_resnet50": Arch(_torchvision("fcn_resnet50"), "backbone.layer4", True),
    "lraspp_mobilenet_v3_large": Arch(_torchvision("lraspp_mobilenet_v3_large"), "backbone.16", True),
}


def build(architecture: str, num_classes: int, state_dict: dict | None = None, **kwargs) -> tuple[nn.Module, str]:
    """Build an architecture (loading ``state_dict`` strictly); returns (logits module, default layer path).

    The auxiliary head is built only when the weights carry one (so they load strictly)
    and is dropped afterwards: Grad-CAM and the mask use the main head only.
    """
    try:
        arch = ARCHS[architecture]
    except KeyError:
        raise ValueError(f"unknown architecture '{architecture}'; known: {', '.join(sorted(ARCHS))}") from None
    aux = bool(state_dict) and any(k.startswith("aux_classifier.") for k in state_dict)
    net = arch.build(num_classes, aux=aux, **kwargs)
    if state_dict is not None:
        problem = mismatch(net.state_dict(), state_dict, num_classes)
        if problem:  # said in a line, where the strict load's error lists every key
            raise ValueError(problem)
        net.load_state_dict(state_dict, strict=True)
    if arch.wraps_dict_output:
        if getattr(net, "aux_classifier", None) is not None:
            net.aux_classifier = None
        return SegmentationOutput(net), arch.target_layer
    return net, arch.target_layer


def find_layer(module: nn.Module, path: str) -> nn.Module:
    """Resolve a target layer path given relative to the bare network (e.g. ``backbone.layer4``)."""
    root = module.net if isinstance(module, SegmentationOutput) else module
    try:
        return root.get_submodule(path)
    except AttributeError:
        raise ValueError(f"target layer '{path}' does not exist in {type(root).__name__}") from None
