"""Load model versions from the store onto the worker's device, verified and cached.

Weights are checked against the manifest's sha256 before torch sees them and are read
with ``weights_only=True``: a tampered or swapped file is refused, and no pickled code
runs. Loaded models are kept in a small LRU so a worker serving several models does not
reload on every job, and never holds more than ``capacity`` of them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from shared.model_store import ModelManifest, ModelStore, sha256_file
from worker.archs.registry import build, find_layer


class ModelLoadError(RuntimeError):
    pass


@dataclass
class LoadedModel:
    manifest: ModelManifest
    module: nn.Module
    target_layer: nn.Module
    target_layer_name: str
    device: torch.device
    mean: torch.Tensor  # (1, 3, 1, 1) on device
    std: torch.Tensor
    needs_input_grad: bool = False  # TorchScript: gradients must flow from the input
    channels_last: bool = False
    backbone_dtype: torch.dtype | None = None  # autocast before the target layer (None: fp32)


class ScriptedSegmenter(nn.Module):
    """A TorchScript model behind the same interface as the others.

    Hooks cannot be attached inside a loaded ScriptModule, so segcam's convention is that a
    TorchScript segmenter returns ``(logits, target_activation)``; the activation passes
    through ``tap``, where Grad-CAM's hooks see it and its gradient.
    """

    def __init__(self, scripted: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.scripted = scripted
        self.tap = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.scripted(x)
        if not (isinstance(out, tuple | list) and len(out) == 2):
            raise ModelLoadError("a TorchScript segmenter must return (logits, target_activation)")
        logits, activation = out
        self.tap(activation)
        return logits


def _at_target_layer(module: nn.Module, args, output):
    """Start the autograd graph at the target layer instead of at the input, in fp32.

    Parameters are frozen, so nothing before this layer records a graph; the CAM needs
    gradients only from the logits back to here. This skips the backbone's backward pass
    (the bulk of Grad-CAM's cost) and gives the same gradients at the layer.

    When the backbone ran under autocast (``bf16_backbone``), autocast ends here: the
    activation becomes fp32 and the rest of the forward, the backward and the CAM run in
    fp32 (the autocast context restores its own state when the pass is over).
    """
    if not isinstance(output, torch.Tensor):
        return None
    out = output
    device_type = out.device.type
    if torch.is_autocast_enabled(device_type):
        torch.set_autocast_enabled(device_type, False)
        out = out.float()
    if torch.is_grad_enabled() and not out.requires_grad:
        out = out.detach().requires_grad_(True).clone()
    return out if out is not output else None


def load_model(
    store: ModelStore,
    manifest: ModelManifest,
    device: torch.device,
    channels_last: bool = True,
    bf16_backbone: bool = False,
) -> LoadedModel:
    """Verify the weights against the manifest's sha256, then build the model from them."""
    path = store.weights_path(manifest)
    if not path.is_file():
        raise ModelLoadError(f"{manifest.ref}: weights file {path.name} is missing")
    digest = sha256_file(path)
    if digest != manifest.sha256:
        raise ModelLoadError(
            f"{manifest.ref}: weights sha256 {digest[:12]}... does not match the manifest's "
            f"{manifest.sha256[:12]}...; refusing to load"
        )
    return build_from_file(manifest, path, device, channels_last, bf16_backbone)


def build_from_file(
    manifest: ModelManifest, path: Path, device: torch.device, channels_last: bool = True, bf16_backbone: bool = False
) -> LoadedModel:
    """``channels_last``: NHWC weights and inputs; the benchmark measured the 384 px DeepLab
    forward 27% faster on CPU with identical masks. ``bf16_backbone``: autocast up to the
    target layer (TorchScript models stay fp32: their target layer is not a hook point)."""
    num_classes = len(manifest.labels)
    needs_input_grad = False
    if manifest.format == "state_dict":
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ModelLoadError(f"{manifest.ref}: {path.name} is not a state_dict")
        module, default_layer = build(manifest.architecture, num_classes, state, **manifest.arch_kwargs)
    elif manifest.format == "torchscript":
        module, default_layer, needs_input_grad = (
            ScriptedSegmenter(torch.jit.load(path, map_location="cpu")),
            "tap",
            True,
        )
    else:
        raise ModelLoadError(f"{manifest.ref}: unsupported weights format '{manifest.format}'")
    layer_name = manifest.target_layer or default_layer
    layer = find_layer(module, layer_name)
    module.eval().requires_grad_(False).to(device)
    channels_last = channels_last and manifest.format == "state_dict"
    if channels_last:
        module.to(memory_format=torch.channels_last)
    if not needs_input_grad:
        layer.register_forward_hook(_at_target_layer)
    norm = manifest.normalization
    return LoadedModel(
        manifest=manifest,
        module=module,
        target_layer=layer,
        target_layer_name=layer_name,
        device=device,
        mean=torch.tensor(norm.mean, device=device).view(1, 3, 1, 1),
        std=torch.tensor(norm.std, device=device).view(1, 3, 1, 1),
        needs_input_grad=needs_input_grad,
        channels_last=channels_last,
        backbone_dtype=torch.bfloat16 if bf16_backbone and not needs_input_grad else None,
    )


class ModelCache:
    def __init__(
        self,
        store: ModelStore,
        device: torch.device,
        capacity: int = 2,
        channels_last: bool = True,
        bf16_backbone: bool = False,
    ) -> None:
        self.store = store
        self.device = device
        self.channels_last = channels_last
        self.bf16_backbone = bf16_backbone
        self.capacity = max(1, capacity)
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, manifest: ModelManifest) -> LoadedModel:
        key = f"{manifest.ref}@{manifest.sha256}"
        with self._lock:
            hit = self._models.get(key)
            if hit is not None:
                self._models.move_to_end(key)
                return hit
            loaded = load_model(self.store, manifest, self.device, self.channels_last, self.bf16_backbone)
            self._models[key] = loaded
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            return loaded

    def loaded(self) -> list[str]:
        return [k.split("@")[0] for k in self._models]
