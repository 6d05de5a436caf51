"""The setup segcam replaces: the same pipeline called inside a FastAPI endpoint.

Loaded once at startup, shared by FastAPI's thread pool, no queue. Used only by the
benchmark (``uvicorn benchmarks.direct_app:app``), configured by environment variables:
BENCH_MODEL_DIR, BENCH_MODEL, BENCH_DEVICE, SEGCAM_TORCH_THREADS, SEGCAM_POSTPROCESS_THREADS (the same
counts as the bench's workers).
"""

from __future__ import annotations

import base64
import os

import torch
from fastapi import FastAPI, File, UploadFile

from shared.model_store import ModelStore
from shared.schemas import Method
from worker.loader import load_model
from worker.pipeline import Item, Pipeline

torch.set_num_threads(int(os.environ.get("SEGCAM_TORCH_THREADS", "1")))
store = ModelStore(os.environ["BENCH_MODEL_DIR"])
model = load_model(store, store.resolve(os.environ["BENCH_MODEL"]), torch.device(os.environ.get("BENCH_DEVICE", "cpu")))
threads = int(os.environ.get("SEGCAM_POSTPROCESS_THREADS", "1"))
app = FastAPI()


@app.post("/segment")
def segment(image: UploadFile = File(...)) -> dict:
    res = Pipeline(model, threads).run([Item("direct", image.file.read())], Method.gradcam)[0]
    return {
        "classes": [c.model_dump() for c in res.classes],
        "explanation": res.explanation.model_dump(mode="json"),
        "timings_ms": res.timings_ms,
        "artifacts": {k: base64.b64encode(v).decode() for k, v in res.artifacts.items()},
    }
