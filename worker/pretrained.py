"""``python -m worker.pretrained ARCH``: bake torchvision's pretrained weights into the model store.

Used by ``Dockerfile.worker`` (``--build-arg PRETRAINED_ARCH=deeplabv3_mobilenet_v3_large``)
where the registry is reachable at build time. The weights are the COCO subset with the 21
Pascal VOC labels; labels, input size and normalisation come from torchvision's own
metadata. Everything after the download is the ordinary import path, which the tests run
with weights saved from a locally built model.
"""

from __future__ import annotations

import argparse
import sys

from shared.model_store import ModelManifest, ModelStore, Normalization
from shared.settings import get_settings
from worker.model_import import import_state_dict

WEIGHTS_ENUMS = {
    "deeplabv3_mobilenet_v3_large": "DeepLabV3_MobileNet_V3_Large_Weights",
    "deeplabv3_resnet50": "DeepLabV3_ResNet50_Weights",
    "fcn_resnet50": "FCN_ResNet50_Weights",
    "lraspp_mobilenet_v3_large": "LRASPP_MobileNet_V3_Large_Weights",
}


def weights_entry(arch: str):
    from torchvision.models import segmentation

    return getattr(segmentation, WEIGHTS_ENUMS[arch]).COCO_WITH_VOC_LABELS_V1


def bake(arch: str, store: ModelStore, state: dict | None = None, alias: str | None = "production") -> ModelManifest:
    """Import ``arch``'s pretrained weights (downloaded unless ``state`` is given) under the name ``arch``."""
    entry = weights_entry(arch)
    if state is None:
        state = entry.get_state_dict(progress=False)
    preset = entry.transforms()
    size = int(getattr(preset, "resize_size", [520])[0])
    manifest = import_state_dict(
        store,
        state,
        name=arch.replace("_", "-"),
        architecture=arch,
        labels=list(entry.meta["categories"]),
        input_size=(size, size),
        normalization=Normalization(mean=tuple(preset.mean), std=tuple(preset.std)),
        metadata={
            "source": entry.url,
            "weights": f"{type(entry).__name__}.{entry.name}",
            "dataset": "COCO-val2017-VOC-labels",
        },
    )
    if alias:
        store.set_alias(manifest.name, manifest.version, alias)
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m worker.pretrained", description=__doc__)
    ap.add_argument("arch", choices=sorted(WEIGHTS_ENUMS))
    ap.add_argument("--store", default=None, help="model store (default: SEGCAM_MODEL_DIR)")
    ap.add_argument("--alias", default="production")
    args = ap.parse_args(argv)
    store = ModelStore(args.store or get_settings().model_dir)
    m = bake(args.arch, store, alias=args.alias or None)
    print(f"imported {m.ref} sha256 {m.sha256} ({len(m.labels)} labels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
