from __future__ import annotations

import io

import pytest
import torch

from shared.model_store import ModelStore
from tests.conftest import ROOT
from worker.loader import LoadedModel, load_model


@pytest.fixture(scope="session")
def demo_model() -> LoadedModel:
    torch.set_num_threads(2)
    store = ModelStore(ROOT / "models" / "store")
    return load_model(store, store.resolve("shapes"), torch.device("cpu"))


def png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()
