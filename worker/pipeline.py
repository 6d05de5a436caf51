"""The compute of a job: decode, preprocess, forward + Grad-CAM, postprocess, encode.

It works on a batch from the start (a single job is a batch of one), so the worker can
hand it several queued jobs for the same model and method at once. It knows nothing of
Redis or Celery: bytes and class IDs in, artifacts and a summary out.

A run is two halves: ``compute`` (decode, preprocess, forward + CAM: the device's part) and
``finish`` (label maps, statistics, PNGs: the CPU's). ``finish`` touches no GPU, so the
worker may run one batch's ``finish`` on another thread while the device computes the next.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from shared.imaging import decode_rgb
from shared.schemas import ClassStat, Explanation, Method, Peak
from worker import render
from worker.cam import explain
from worker.labels import LabelMap, Reduced, assemble, label_map, reduce_logits
from worker.loader import LoadedModel


@dataclass
class Item:
    job_id: str
    data: bytes
    class_id: int | None = None


@dataclass
class ItemResult:
    width: int
    height: int
    classes: list[ClassStat]
    explanation: Explanation
    artifacts: dict[str, bytes]
    cam: np.ndarray  # (h, w) float32 at model input resolution
    labels: np.ndarray  # (H, W) uint8 at original resolution
    timings_ms: dict[str, float] = field(default_factory=dict)
    media_types: dict[str, str] = field(default_factory=dict)  # artifact name -> what its bytes are


@dataclass
class Computed:
    """A batch after its forward pass: what ``finish`` needs, all of it on the host."""

    images: list[Image.Image]
    method: Method
    cams: np.ndarray
    targets: list
    logits: torch.Tensor | None  # on the CPU, for the label maps made in ``finish``
    reduced: list[Reduced | LabelMap] | None  # beside a GPU, each image's logits reduced on it
    timings_ms: dict[str, float]
    overlays: list[str]  # each image's overlay media type
    labels_s: float = 0.0  # the time the reductions on the GPU took, counted as encoding

    def one(self, i: int) -> Computed:
        """Image ``i`` alone, as the batch computed it (to finish it without the others)."""
        return Computed(
            self.images[i : i + 1], self.method, self.cams[i : i + 1], self.targets[i : i + 1],
            None if self.logits is None else self.logits[i : i + 1],
            None if self.reduced is None else self.reduced[i : i + 1],
            self.timings_ms, self.overlays[i : i + 1], self.labels_s / len(self.images),
        )  # fmt: skip


def default_threads(device: torch.device) -> int:
    """Post-processing threads when not configured, at most 8. On the CPU, as many as torch
    computes with (the worker's share of the cores; the two never run at once); beside a GPU,
    the cores this process may use, which the device leaves idle."""
    cores = len(os.sched_getaffinity(0)) if device.type == "cuda" else torch.get_num_threads()
    return max(1, min(8, cores))


class Pipeline:
    """``threads``: how many threads share a batch's CPU work around the forward pass (decoding
    and resizing; label maps, statistics, PNGs: torch, numpy and Pillow release the GIL there).
    On a GPU that work would otherwise run image after image while the device waits."""

    def __init__(self, model: LoadedModel, threads: int = 1, overlay: render.Overlay = render.LOSSLESS) -> None:
        self.model = model
        self.overlay = overlay
        self.labels = model.manifest.labels
        self.cuda = model.device.type == "cuda"
        self.pool = _pool(threads) if threads > 1 else _INLINE
        self.device_labels = self.cuda  # logits reduced in ``compute``, on the device

    def clock(self) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.model.device)
        return time.perf_counter()

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        h, w = self.model.manifest.input_size
        arr = np.stack(self._map(lambda im: np.asarray(im.resize((w, h), Image.BILINEAR), dtype=np.uint8), images))
        x = torch.from_numpy(arr).to(self.model.device).permute(0, 3, 1, 2).float().div_(255.0)
        x = (x - self.model.mean) / self.model.std
        return x.contiguous(memory_format=torch.channels_last) if self.model.channels_last else x.contiguous()

    def run(self, items: list[Item], method: Method, on_stage: Callable[[str], None] | None = None) -> list[ItemResult]:
        return self.finish(self.compute(items, method, on_stage), on_stage)

    def compute(self, items: list[Item], method: Method, on_stage: Callable[[str], None] | None = None) -> Computed:
        stage = on_stage or (lambda _s: None)
        num_classes = len(self.labels)
        for it in items:
            if it.class_id is not None and not 0 <= it.class_id < num_classes:
                raise ValueError(f"class {it.class_id} is out of range (0..{num_classes - 1})")

        stage("preprocess")
        t0 = self.clock()
        images = self._map(decode_rgb, [it.data for it in items])
        x = self.preprocess(images)
        t1 = self.clock()

        stage("inference")
        out = explain(
            self.model.module,
            self.model.target_layer,
            x,
            [it.class_id for it in items],
            method,
            clock=self.clock,
            on_forward=lambda: stage("cam"),
            input_grad=self.model.needs_input_grad,
            backbone_dtype=self.model.backbone_dtype,
        )
        t2 = self.clock()
        timings = {
            "preprocess_ms": (t1 - t0) * 1000 / len(items),
            "inference_ms": out.forward_s * 1000,
            "cam_ms": (t2 - t1 - out.forward_s) * 1000,
        }
        overlays = [self.overlay.media_type(it.data) for it in items]
        if not self.device_labels:
            return Computed(images, method, out.cams, out.targets, out.logits, None, timings, overlays)
        # Reduced here, on the device, the logits leave ``finish`` nothing to queue behind the
        # next batch's kernels, and only what the label maps need is copied to the host.
        reduced = [reduce_logits(out.logits[i : i + 1], h, w) for i, (w, h) in enumerate(im.size for im in images)]
        return Computed(images, method, out.cams, out.targets, None, reduced, timings, overlays, self.clock() - t2)

    def finish(self, computed: Computed, on_stage: Callable[[str], None] | None = None) -> list[ItemResult]:
        """The CPU's half; no GPU work, so no wait for another thread's kernels (hence
        ``perf_counter``, not ``clock``)."""
        (on_stage or (lambda _s: None))("encode")
        c = computed
        te = time.perf_counter()
        results = self._postprocess(c.images, c.logits, c.cams, c.targets, c.method, c.reduced, c.overlays)
        encode_ms = (time.perf_counter() - te + c.labels_s) * 1000 / len(results)
        for res in results:
            res.timings_ms = {**c.timings_ms, "encode_ms": encode_ms}
        return results

    def _postprocess(self, images, logits, cams, targets, method, reduced=None, overlays=None) -> list[ItemResult]:
        """Each image's two independent halves (label map with its statistics and mask; heatmap
        with the overlay) go to the pool. ``reduced``: each image's logits reduced already (on a
        GPU), in place of ``logits``. ``overlays``: each overlay's media type (PNG when not given)."""
        overlays = overlays or [render.PNG] * len(images)
        pending = []
        for i, image in enumerate(images):
            source = reduced[i] if reduced is not None else logits[i : i + 1]
            pending.append(self.pool.submit(self._segmentation, source, image.size))
            pending.append(self.pool.submit(self._heat, image, cams[i], overlays[i]))
        parts = _results(pending)
        results = []
        for i, image in enumerate(images):
            (labels, stats, mask), (heat, heat_png, overlay) = parts[2 * i], parts[2 * i + 1]
            explanation = self._explanation(targets[i], method, heat, labels)
            artifacts = {"mask": mask, "heatmap": heat_png, "overlay": overlay}
            media = {"mask": render.PNG, "heatmap": render.PNG, "overlay": overlays[i]}
            w, h = image.size
            results.append(ItemResult(w, h, stats, explanation, artifacts, cams[i], labels, media_types=media))
        return results

    def _map(self, fn: Callable, xs: list) -> list:
        if len(xs) == 1:  # nothing to share: a hand-off would only add its own cost
            return [fn(xs[0])]
        return _results([self.pool.submit(fn, x) for x in xs])

    def _segmentation(
        self, source: torch.Tensor | Reduced | LabelMap, size: tuple[int, int]
    ) -> tuple[np.ndarray, list[ClassStat], bytes]:
        """``source``: one image's logits (1, C, h, w), or what ``reduce_logits`` kept of them.
        The label map at the upload's size (``worker/labels.py``: the argmax of the bilinearly
        upsampled logits, without upsampling them), its classes' statistics and the mask."""
        W, H = size
        m = label_map(source, H, W) if isinstance(source, torch.Tensor) else assemble(source, H, W)
        return m.labels, self._stats(m), render.mask_png(m.labels)

    def _heat(self, image: Image.Image, cam: np.ndarray, overlay: str) -> tuple[np.ndarray, bytes, bytes]:
        """The CAM upsampled bilinearly by torch, not Pillow: the same values within 2e-6, and at
        12 megapixels 44 ms where Pillow's resize and the copy out of it took 100."""
        W, H = image.size
        small = torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32))[None, None]
        heat = F.interpolate(small, size=(H, W), mode="bilinear", align_corners=False)[0, 0].numpy()
        heat_u8 = render.heatmap_u8(heat)
        png = render.heatmap_png(heat_u8)
        return heat, png, render.overlay_image(image, heat_u8, overlay, self.overlay.jpeg_quality)

    def _stats(self, m: LabelMap) -> list[ClassStat]:
        total = m.labels.size
        return [
            ClassStat(
                id=c,
                label=self.labels[c],
                pixel_fraction=round(float(m.counts[c] / total), 6),
                mean_confidence=round(float(m.conf_sums[c] / m.counts[c]), 6),
                color=render.hex_colour(c),
            )
            for c in range(len(self.labels))
            if m.counts[c] > 0
        ]

    def _explanation(self, target, method: Method, heat: np.ndarray, labels: np.ndarray) -> Explanation:
        c = target.class_id
        base = dict(
            class_id=c,
            class_label=self.labels[c] if c is not None else None,
            method=method,
            target_layer=self.model.target_layer_name,
        )
        if target.empty:
            reason = (
                "no non-background class was predicted"
                if c is None
                else f"class '{self.labels[c]}' is not present in the prediction"
            )
            return Explanation(**base, empty=True, reason=reason)
        y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
        total = float(heat.sum())
        inside = float(heat[labels == c].sum())
        return Explanation(
            **base,
            empty=False,
            peak=Peak(x=int(x), y=int(y)),
            energy_in_mask=round(inside / total, 6) if total > 0 else 0.0,
        )


class _Inline:
    """The executor interface, run at once in the caller's thread: one thread, no hand-offs; a
    failure (or the task's time limit) raises at once, before the next image is touched."""

    def submit(self, fn, *args) -> Future:
        f: Future = Future()
        f.set_result(fn(*args))
        return f


_INLINE = _Inline()


def _results(pending: list[Future]) -> list:
    """Each future's result in order; the first failure is raised and cancels what has not started."""
    try:
        return [f.result() for f in pending]
    finally:
        for f in pending:
            f.cancel()


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    """One pool per process and size: a pool made before a fork has no threads in the child."""
    key = (os.getpid(), threads)
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(threads, thread_name_prefix="postprocess")
    return _POOLS[key]
