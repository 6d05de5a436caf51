"""Grad-CAM for segmentation on one forward pass, via pytorch-grad-cam.

The target of each image is "the score of class c summed over the pixels predicted as
c", the library's SemanticSegmentationTarget, except that the mask comes from the same
forward pass that the CAM records, so a job costs one forward and one backward. When no
class is requested the target picks the largest predicted non-background class itself.
Images of one batch may ask for different classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from pytorch_grad_cam.base_cam import BaseCAM

from shared.schemas import Method


class ThinEigenCAM(EigenCAM):
    """EigenCAM with a thin SVD.

    The library computes ``np.linalg.svd(A, full_matrices=True)`` on the (H*W, C)
    activations, which builds an (H*W)^2 matrix U that it never uses: seconds per image
    at a 96x96 layer. Only the first right singular vector matters, and the thin SVD
    gives the same one. A test checks the maps equal the library's.
    """

    def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth):
        acts = np.nan_to_num(np.asarray(activations, dtype=np.float32))
        out = []
        for a in acts:
            flat = a.reshape(a.shape[0], -1).T
            flat = flat - flat.mean(axis=0)
            _, _, vt = np.linalg.svd(flat, full_matrices=False)
            out.append((flat @ vt[0]).reshape(a.shape[1:]))
        return np.float32(out)


METHODS: dict[Method, type[BaseCAM]] = {
    Method.gradcam: GradCAM,
    Method.gradcam_pp: GradCAMPlusPlus,
    Method.hirescam: HiResCAM,
    Method.xgradcam: XGradCAM,
    Method.layercam: LayerCAM,
    Method.eigencam: ThinEigenCAM,
}


class ClassRegionTarget:
    """Callable target for one image's logits ``(C, H, W)``; remembers what it explained."""

    def __init__(self, class_id: int | None, background: int = 0) -> None:
        self.requested = class_id
        self.background = background
        self.class_id: int | None = None
        self.mask: torch.Tensor | None = None  # (H, W) bool, at model resolution

    def resolve(self, logits: torch.Tensor) -> None:
        pred = logits.detach().max(0).indices  # max().indices: ~7x faster than argmax(0) on CPU
        c = self.requested
        if c is None:
            counts = torch.bincount(pred.flatten(), minlength=logits.shape[0])
            counts[self.background] = 0
            c = int(counts.argmax()) if int(counts.max()) > 0 else None
        self.class_id = c
        self.mask = (pred == c) if c is not None else torch.zeros_like(pred, dtype=torch.bool)

    @property
    def empty(self) -> bool:
        return self.mask is None or not bool(self.mask.any())

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        self.resolve(logits)
        if self.class_id is None:
            return logits.sum() * 0.0
        return (logits[self.class_id] * self.mask).sum()


@dataclass
class CamOutput:
    logits: torch.Tensor  # (B, C, H, W), detached, on the model's device
    cams: np.ndarray  # (B, H, W) float32 in [0, 1], at model input resolution
    targets: list[ClassRegionTarget]
    forward_s: float  # time until the forward pass returned


def explain(
    module: torch.nn.Module,
    target_layer: torch.nn.Module,
    x: torch.Tensor,
    class_ids: list[int | None],
    method: Method,
    clock,
    on_forward=None,
    input_grad: bool = False,
    backbone_dtype: torch.dtype | None = None,
) -> CamOutput:
    """Run one forward (+ one backward) for the batch ``x``.

    ``on_forward`` is called between the forward and the backward pass: the place for a
    stage report or a cooperative cancellation check. The CAM object lives only for this
    call, so its hooks are released and no activations outlive the batch.
    """
    targets = [ClassRegionTarget(c) for c in class_ids]
    marks: dict[str, float] = {}

    def after_forward(_m, _a, _out):
        marks["forward"] = clock()
        if on_forward is not None:
            on_forward()

    if input_grad:  # TorchScript: the graph has to start at the input
        x = x.detach().requires_grad_(True)
    started = clock()
    handle = module.register_forward_hook(after_forward)
    try:
        cam_cls = METHODS[method]
        grad_mode = torch.no_grad() if method is Method.eigencam else torch.enable_grad()
        # With backbone_dtype, autocast covers the layers before the target layer only: the
        # target layer's hook turns it off (worker/loader.py), so the CAM's part stays fp32.
        autocast = torch.autocast(x.device.type, dtype=backbone_dtype or torch.float32, enabled=bool(backbone_dtype))
        with grad_mode, cam_cls(model=module, target_layers=[target_layer]) as cam, autocast:
            cams = cam(input_tensor=x, targets=targets)
            logits = cam.outputs.detach()
    finally:
        handle.remove()
        module.zero_grad(set_to_none=True)
    for t, out in zip(targets, logits, strict=True):
        if t.mask is None:  # EigenCAM never calls its targets
            t.resolve(out)
    for i, t in enumerate(targets):
        if t.empty:
            cams[i] = 0.0
    return CamOutput(logits=logits, cams=cams, targets=targets, forward_s=marks.get("forward", started) - started)
