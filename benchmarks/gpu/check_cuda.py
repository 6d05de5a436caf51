"""On a GPU: the pipeline on CUDA agrees with the CPU, and its post-processing threads change
nothing. Exits 1 on a disagreement, so the GPU run stops before benchmarking wrong results.

    python -m benchmarks.gpu.check_cuda
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from shared.model_store import ModelStore
from shared.schemas import Method
from shared.settings import ROOT
from training.shapes import held_out
from worker.loader import load_model
from worker.pipeline import Item, Pipeline
from worker.render import encode_png


def main() -> int:
    if not torch.cuda.is_available():
        print("no GPU visible to torch")
        return 1
    store = ModelStore(ROOT / "models" / "store")
    manifest = store.resolve("shapes")
    cpu, gpu = (load_model(store, manifest, torch.device(d)) for d in ("cpu", "cuda:0"))
    items = [Item(str(i), encode_png(s.image)) for i, s in enumerate(held_out(8))]
    failures = []
    for method in Method:
        ref = Pipeline(cpu).run(items, method)
        one, many = (Pipeline(gpu, n).run(items, method) for n in (1, 4))
        for a, b, c in zip(ref, one, many, strict=True):
            if b.artifacts != c.artifacts or b.explanation != c.explanation:
                failures.append(f"{method.value}: 4 threads differ from 1 on the GPU")
            agree = float(np.mean(a.labels == b.labels))
            cam = float(np.abs(a.cam - b.cam).max())
            if agree < 0.999 or cam > 1e-2 or a.explanation.class_id != b.explanation.class_id:
                failures.append(f"{method.value}: CPU vs GPU labels {agree:.4f}, CAM max diff {cam:.4f}")
        print(f"{method.value}: {len(items)} images, CPU and {torch.cuda.get_device_name(0)} agree", flush=True)
    for f in failures:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
