"""worker/labels.py gives the argmax of the bilinearly upsampled logits, as upsampling them all
with F.interpolate does, at any size and without the C x H x W floats; its statistics are the
full upsampling's (counts exactly, mean confidences within a small tolerance)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from worker import labels


def _full(logits: torch.Tensor, H: int, W: int):
    """What the pipeline computed before stop 40 (within its budget): every channel upsampled."""
    s = F.interpolate(logits.float(), size=(H, W), mode="bilinear", align_corners=False)[0]
    top, pred = s.max(0)
    conf = (s - top).exp().sum(0).reciprocal()
    C = logits.shape[1]
    sums = torch.zeros(C, dtype=torch.float64).index_add_(0, pred.flatten(), conf.flatten().double())
    return pred.numpy().astype(np.uint8), np.bincount(pred.numpy().ravel(), minlength=C), sums.numpy()


def _logits(C: int, h: int, w: int, smooth: bool, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if not smooth:
        return torch.randn(1, C, h, w, generator=g)
    coarse = torch.randn(1, C, max(2, h // 8), max(2, w // 8), generator=g) * 4
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("C, h, w", [(4, 64, 64), (21, 48, 40), (2, 5, 7)])
@pytest.mark.parametrize("smooth", [True, False], ids=["regions", "noise"])
@pytest.mark.parametrize("H, W", [(1, 1), (7, 5), (30, 20), (64, 64), (390, 520), (301, 433)])
def test_labels_and_statistics_are_those_of_the_full_upsampling(C, h, w, smooth, H, W):
    logits = _logits(C, h, w, smooth, seed=C * 1000 + H)
    want, counts, sums = _full(logits, H, W)
    got = labels.label_map(logits, H, W)
    assert got.labels.dtype == np.uint8 and got.labels.shape == (H, W)
    assert np.array_equal(got.labels, want)
    assert np.array_equal(got.counts, counts)
    present = counts > 0
    assert np.allclose(got.conf_sums[present] / counts[present], sums[present] / counts[present], atol=0.015)


def test_inside_regions_only_boundary_cells_are_interpolated_and_the_rest_is_exact_in_confidence():
    """One class everywhere: no cell is mixed, nothing is interpolated per pixel, and the
    confidence is the upsampled probability's mean, which for constant logits is exact."""
    logits = torch.zeros(1, 3, 10, 10)
    logits[0, 1] = 2.0
    r = labels.reduce_logits(logits, 123, 77)
    assert not r.mixed.any() and r.corners.shape == (0, 4, 3)
    m = labels.assemble(r, 123, 77)
    assert (m.labels == 1).all() and m.counts.tolist() == [0, 123 * 77, 0]
    p = np.exp(2.0) / (np.exp(2.0) + 2)
    assert m.conf_sums[1] / m.counts[1] == pytest.approx(p, rel=1e-5)


def test_an_upload_no_larger_than_the_logits_is_mapped_the_plain_way_with_exact_statistics():
    logits = _logits(5, 40, 40, smooth=True, seed=4)
    assert isinstance(labels.reduce_logits(logits, 40, 40), labels.LabelMap)
    assert isinstance(labels.reduce_logits(logits, 41, 40), labels.Reduced)
    for H, W in ((40, 40), (25, 60), (12, 9)):
        want, counts, sums = _full(logits, H, W)
        got = labels.label_map(logits, H, W)
        assert np.array_equal(got.labels, want) and np.array_equal(got.counts, counts)
        assert np.allclose(got.conf_sums, sums, rtol=1e-5)


def test_a_class_that_wins_only_between_model_pixels_is_found():
    """Class 2 is the argmax at no model pixel, but halfway between two it is: the full
    upsampling shows it, and so must the map."""
    logits = torch.zeros(1, 3, 1, 2)
    logits[0, 0, 0, 0], logits[0, 1, 0, 1] = 10.0, 10.0  # left: class 0; right: class 1
    logits[0, 2] = 6.0  # second everywhere; first where the two average to 5 each
    want, counts, _ = _full(logits, 1, 40)
    assert counts[2] > 0
    got = labels.label_map(logits, 1, 40)
    assert np.array_equal(got.labels, want) and got.counts[2] == counts[2]


def test_chunks_of_any_size_give_the_same_map(monkeypatch):
    logits = _logits(5, 32, 32, smooth=False, seed=3)
    whole = labels.label_map(logits, 200, 300)
    monkeypatch.setattr(labels, "CHUNK_FLOATS", 1)  # one cell at a time
    one = labels.label_map(logits, 200, 300)
    assert np.array_equal(whole.labels, one.labels) and np.array_equal(whole.counts, one.counts)
    assert np.allclose(whole.conf_sums, one.conf_sums)


def test_a_large_upload_gets_smooth_edges_not_model_pixel_steps():
    """Until stop 40, above C x H x W = 32 M, the map was the model's argmax upsampled by
    nearest neighbour: a diagonal edge came out as steps one model pixel (here 40) wide."""
    h = w = 16
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    logits = torch.stack([xx - yy, yy - xx + 0.3]).unsqueeze(0)  # a diagonal boundary
    H = W = 640
    m = labels.label_map(logits, H, W)
    edge = (m.labels == 0).argmax(1)[40:-40]  # per row, where class 0 (right of the diagonal) starts
    assert np.diff(edge).min() >= 0 and np.diff(edge).max() <= 2  # about a pixel per row, never a jump
    nearest = np.repeat(np.repeat(logits[0].argmax(0).numpy(), 40, 0), 40, 1)
    assert np.diff((nearest == 0).argmax(1)[40:-40]).max() == 40  # what the old fallback gave


def test_the_callers_logits_are_left_as_they_were_and_channels_last_gives_the_same_map():
    logits = _logits(6, 20, 24, smooth=True, seed=9)
    kept = logits.clone()
    m = labels.label_map(logits, 100, 90)
    assert torch.equal(logits, kept)
    cl = labels.label_map(logits.contiguous(memory_format=torch.channels_last), 100, 90)
    assert np.array_equal(m.labels, cl.labels) and np.allclose(m.conf_sums, cl.conf_sums)
