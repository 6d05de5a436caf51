"""Put a model into the store: ``segcam models import``, and the pretrained bake in Dockerfile.worker.

The weights are loaded and run once (a forward pass and a Grad-CAM on a blank image) before
the version is written, so a wrong architecture, label count or target layer is refused at
import time instead of failing jobs later. Versions are immutable; ``latest`` follows the
newest import.
"""

from __future__ import annotations

import io
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import torch
from PIL import Image

from shared.model_store import ModelManifest, ModelStore, Normalization, StoreError, sha256_file
from shared.schemas import Method
from worker.archs.registry import ARCHS
from worker.loader import ModelLoadError, build_from_file
from worker.pipeline import Item, Pipeline
from worker.weights import WeightsError, read_state_dict, strip_owner_prefix

IMAGENET = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
DEFAULTS = {  # architecture: (input size, normalisation)
    "shapes_unet": ((96, 96), Normalization(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))),
    "torchscript": ((520, 520), IMAGENET),
}
FORMATS = ("state_dict", "torchscript")


def detect_format(weights: Path) -> str:
    """TorchScript archives carry compiled code; anything else is treated as a state_dict."""
    import zipfile

    if zipfile.is_zipfile(weights):
        with zipfile.ZipFile(weights) as z:
            if any(n.split("/", 1)[-1].startswith("code/") for n in z.namelist()):
                return "torchscript"
    return "state_dict"


def import_model(
    store: ModelStore,
    weights: Path,
    name: str,
    architecture: str,
    labels: list[str],
    version: str | None = None,
    fmt: str | None = None,
    input_size: tuple[int, int] | None = None,
    normalization: Normalization | None = None,
    target_layer: str | None = None,
    arch_kwargs: dict | None = None,
    metadata: dict | None = None,
) -> ModelManifest:
    weights = Path(weights)
    fmt = fmt or detect_format(weights)
    if fmt not in FORMATS:
        raise StoreError(f"unknown format '{fmt}'; use one of {', '.join(FORMATS)}")
    if fmt == "torchscript":
        architecture = "torchscript"
    elif architecture not in ARCHS:
        raise StoreError(f"unknown architecture '{architecture}'; known: {', '.join(sorted(ARCHS))}")
    version = version or store.next_version(name)
    store.check_new_version(name, version)  # before the weights are loaded and run
    size_default, norm_default = DEFAULTS.get(architecture, ((520, 520), IMAGENET))
    manifest = ModelManifest(
        name=name,
        version=version,
        architecture=architecture,
        format=fmt,
        arch_kwargs=arch_kwargs or {},
        labels=labels,
        input_size=input_size or size_default,
        normalization=normalization or norm_default,
        target_layer=target_layer,
        weights_file="weights.pt",
        sha256="0" * 64,  # set from the copied file by the store
        created_at=datetime.now(UTC),
        metadata=metadata or {},
    )
    with tempfile.TemporaryDirectory() as tmp:
        if fmt == "state_dict":
            weights, manifest = _plain_state_dict(weights, manifest, Path(tmp))
        try:
            check_runs(manifest, weights)
        except (ModelLoadError, RuntimeError, ValueError, KeyError) as e:
            raise StoreError(f"{manifest.ref}: the weights do not load as {architecture}: {e}"[:800]) from None
        manifest = store.add_version(manifest, weights)
    store.set_alias(name, manifest.version, "latest")
    return manifest


def _plain_state_dict(weights: Path, manifest: ModelManifest, tmp: Path) -> tuple[Path, ModelManifest]:
    """A checkpoint or a wrapper's keys become a plain state_dict, the file the store keeps; the
    manifest says what was done and the source file's sha256, so the version traces back to it."""
    try:
        state, notes = read_state_dict(weights)
    except WeightsError as e:
        raise StoreError(f"{manifest.ref}: {e}") from None
    if manifest.architecture in ARCHS:
        state, note = strip_owner_prefix(state, lambda: architecture_keys(manifest))
        notes += [note] if note else []
    if not notes:
        return weights, manifest
    plain = tmp / "weights.pt"
    torch.save(state, plain)
    metadata = {**manifest.metadata, "converted": "; ".join(notes), "source_sha256": sha256_file(weights)}
    return plain, manifest.model_copy(update={"metadata": metadata})


def architecture_keys(manifest: ModelManifest) -> list[set[str]]:
    """The state_dict keys the architecture has, with and without its auxiliary head."""
    build = ARCHS[manifest.architecture].build
    n = len(manifest.labels)
    kinds = [False, True] if ARCHS[manifest.architecture].wraps_dict_output else [False]
    return [set(build(n, aux=aux, **manifest.arch_kwargs).state_dict()) for aux in kinds]


def check_runs(manifest: ModelManifest, weights: Path) -> None:
    """Load on the CPU and explain a blank image at a small size: cheap, and it exercises everything."""
    loaded = build_from_file(manifest, weights, torch.device("cpu"))
    small = manifest.model_copy(update={"input_size": (64, 64)})
    loaded.manifest = small
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 120, 120)).save(buf, "PNG")
    Pipeline(loaded).run([Item("import-check", buf.getvalue(), 0)], Method.gradcam)


def import_state_dict(store: ModelStore, state: dict, **kwargs) -> ModelManifest:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.pt"
        torch.save(state, path)
        return import_model(store, path, fmt="state_dict", **kwargs)
