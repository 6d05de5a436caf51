"""A batch's CPU work on several threads gives the same bytes as on one, and fails the same way.

Decoding and resizing, then label maps, statistics and PNGs are shared out to a thread pool
(a GPU worker would otherwise do them image after image while the device waits); nothing
about a result may depend on which thread made it.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from shared.imaging import ImageRejected, decode_rgb
from shared.schemas import Method
from tests.explain.conftest import png
from training.shapes import held_out
from worker import pipeline, render
from worker.pipeline import Item, Pipeline, default_threads


@pytest.fixture(scope="module")
def items():
    scenes = held_out(5)
    out = [Item(str(i), png(s.image), None if i % 2 else 1) for i, s in enumerate(scenes[:4])]
    bigger = scenes[4].image.resize((300, 170), Image.BILINEAR)  # another size in the same batch
    return [*out, Item("4", png(bigger), 2)]


def same(a, b) -> None:
    assert a.artifacts == b.artifacts  # byte for byte
    assert a.classes == b.classes
    assert a.explanation == b.explanation
    assert np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.cam, b.cam)
    assert (a.width, a.height) == (b.width, b.height)


@pytest.mark.parametrize("threads", [2, 3])
def test_threaded_post_processing_equals_one_thread(demo_model, items, threads):
    one = Pipeline(demo_model, 1).run(items, Method.gradcam)
    many = Pipeline(demo_model, threads).run(items, Method.gradcam)
    assert [r.width for r in many] == [r.width for r in one] and many[-1].width == 300
    for a, b in zip(one, many, strict=True):
        same(a, b)


def test_threaded_decoding_gives_the_same_input(demo_model, items):
    images = [decode_rgb(it.data) for it in items]
    assert torch.equal(Pipeline(demo_model, 1).preprocess(images), Pipeline(demo_model, 3).preprocess(images))


@pytest.mark.parametrize("threads", [1, 2])
def test_an_undecodable_image_in_a_batch_is_rejected_on_any_thread_count(demo_model, items, threads):
    broken = [*items[:2], Item("bad", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64), *items[2:]]
    with pytest.raises(ImageRejected):
        Pipeline(demo_model, threads).run(broken, Method.gradcam)


def test_the_label_map_leaves_the_callers_logits_as_they_were(demo_model):
    logits = torch.randn(1, len(demo_model.manifest.labels), 12, 16)
    kept = logits.clone()
    labels, stats, mask = Pipeline(demo_model)._segmentation(logits, (32, 24))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(mask))), labels)
    assert torch.equal(logits, kept)
    assert labels.shape == (24, 32) and abs(sum(c.pixel_fraction for c in stats) - 1) < 1e-5


def test_a_failure_in_one_image_is_raised_from_the_pool(demo_model, items, monkeypatch):
    real = render.overlay_image
    calls = []

    def breaks_on_the_second(image, heat, *a):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("encoder broke")
        return real(image, heat, *a)

    monkeypatch.setattr(render, "overlay_image", breaks_on_the_second)
    with pytest.raises(RuntimeError, match="encoder broke"):
        Pipeline(demo_model, 2).run(items, Method.gradcam)
    calls.clear()
    with pytest.raises(RuntimeError, match="encoder broke"):
        Pipeline(demo_model, 1).run(items, Method.gradcam)
    assert len(calls) == 2  # on one thread nothing after the failure runs


def test_each_process_gets_its_own_pool(monkeypatch):
    """A pool made before a fork has no threads in the child: work submitted there would wait
    forever. Pools are kept per process ID."""
    first = pipeline._pool(2)
    assert pipeline._pool(2) is first
    monkeypatch.setattr(pipeline.os, "getpid", lambda: -1)
    child = pipeline._pool(2)
    assert child is not first
    assert child.submit(lambda: 41 + 1).result(timeout=10) == 42


def test_default_threads_follow_torch_on_the_cpu_and_the_cores_beside_a_gpu(monkeypatch):
    before = torch.get_num_threads()
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    try:
        torch.set_num_threads(3)
        assert default_threads(cpu) == 3
        torch.set_num_threads(12)
        assert default_threads(cpu) == 8
        torch.set_num_threads(1)
        monkeypatch.setattr(pipeline.os, "sched_getaffinity", lambda _pid: set(range(16)))
        assert default_threads(gpu) == 8  # torch's one thread does not count beside a GPU
        monkeypatch.setattr(pipeline.os, "sched_getaffinity", lambda _pid: {0, 1})
        assert default_threads(gpu) == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2])
def test_label_maps_made_in_compute_give_the_same_results(demo_model, items, threads):
    """Beside a GPU the logits are reduced in ``compute`` (on the device), so ``finish`` has no
    GPU work to queue behind the next batch's kernels. Forced here on the CPU: same bytes, and
    ``finish`` gets no logits at all."""
    one = Pipeline(demo_model, 1).run(items, Method.gradcam)
    pipe = Pipeline(demo_model, threads)
    pipe.device_labels = True
    computed = pipe.compute(items, Method.gradcam)
    assert computed.logits is None and len(computed.reduced) == len(items)
    for a, b in zip(one, pipe.finish(computed), strict=True):
        same(a, b)
        assert set(b.timings_ms) == {"preprocess_ms", "inference_ms", "cam_ms", "encode_ms"}


def test_compute_then_finish_reports_every_stage_in_order(demo_model, items):
    seen = []
    pipe = Pipeline(demo_model, 2)
    computed = pipe.compute(items[:2], Method.gradcam, on_stage=seen.append)
    assert seen == ["preprocess", "inference", "cam"]
    results = pipe.finish(computed, on_stage=seen.append)
    assert seen[-1] == "encode" and len(results) == 2
    assert computed.reduced is None and computed.logits is not None  # on the CPU: reduced in finish


@pytest.mark.parametrize("device_labels", [False, True])
def test_each_image_finished_alone_equals_the_batch_finished_together(demo_model, items, device_labels):
    """How the worker finishes the rest of a batch when one image breaks its finish: from the
    batch's own outputs, without a second forward pass."""
    pipe = Pipeline(demo_model, 2)
    pipe.device_labels = device_labels
    computed = pipe.compute(items, Method.gradcam)
    together = pipe.finish(computed)
    for i, whole in enumerate(together):
        (alone,) = pipe.finish(computed.one(i))
        same(alone, whole)
