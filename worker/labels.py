"""The upload-resolution label map of bilinearly upsampled logits, without upsampling them.

The mask is the argmax over classes of the logits upsampled (bilinear, as ``F.interpolate``
with ``align_corners=False``) to the upload's size. Upsampling all C channels costs C x H x W
floats: 171-184 ms for the 21-class model at 1280x960 on this machine, a gigabyte at 12
megapixels. Until stop 40 a budget sent larger images to a label map upsampled by nearest
neighbour instead, with staircase edges one model pixel wide (42 x 31 upload pixels for the
demo model on a 12-megapixel photo).

Every output pixel is a convex combination of four model pixels, its cell's corners. Where the
four have the same argmax class k, k is the argmax of the combination too (each corner's k-th
logit is its largest, so their weighted sum's is). Only the pixels of cells whose corners
disagree, along the class boundaries, need their C logits interpolated; every other pixel takes
its cell's class. The map is the full upsampling's argmax, for a gather plus the boundaries.

The statistics come from the same split. Pixel counts are exact. A class's mean confidence sums
the top softmax probability per pixel: exactly, from the interpolated logits, in boundary
cells; inside a class's region, as the model-resolution probability upsampled bilinearly
(summed per cell in closed form). Against the full upsampling's, the means differed by at most
0.011 on smooth random logits and 0.0001 on noise (``tests/unit/test_labels.py``).

Two halves: ``reduce_logits`` runs where the logits are (torch; beside a GPU, on the device)
and keeps what the map needs, small enough to copy to the host; ``assemble`` builds the map
there (numpy, whose gathers and fancy indexing were 5-40x faster than torch's on the CPU). An
upload no larger than the model's output is cheaper to map the plain way, every channel
upsampled, and is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

CHUNK_FLOATS = 1 << 22  # interpolated logits held at a time (16 MB)


@dataclass
class Reduced:
    """One image's logits as the label map needs them: model resolution (h, w), C classes."""

    pred: np.ndarray  # (h, w) int64: argmax class
    conf: np.ndarray  # (h, w) float32: top softmax probability
    mixed: np.ndarray  # (h, w) bool: cells whose four corners disagree on the class
    corners: np.ndarray  # (n, 4, C) float32: each mixed cell's corner logits, in np.nonzero order


@dataclass
class LabelMap:
    labels: np.ndarray  # uint8 (H, W): class per upload pixel
    counts: np.ndarray  # int64 (C,): pixels per class; sums to H * W
    conf_sums: np.ndarray  # float64 (C,): summed top-class probability over each class's pixels


def label_map(logits: torch.Tensor, H: int, W: int) -> LabelMap:
    """``logits``: (1, C, h, w), left as they are."""
    return assemble(reduce_logits(logits, H, W), H, W)


def _far(n: int, device: torch.device | None = None) -> torch.Tensor:
    """A cell's far corner along an axis of n model pixels: the next one, clamped at the edge."""
    return (torch.arange(n, device=device) + 1).clamp_(max=n - 1)


@torch.no_grad()
def reduce_logits(logits: torch.Tensor, H: int, W: int) -> Reduced | LabelMap:
    """What the map at H x W needs of ``logits``, on their device, copied to the host. An upload
    no larger than the logits gets its map at once: upsampling C x H x W costs no more there."""
    h, w = logits.shape[2:]
    if h * w >= H * W:
        return _upsampled(logits, H, W)
    L = logits[0].float()
    top, pred = _max_and_argmax(L)
    conf = (L - top).exp_().sum(0).reciprocal_()  # the top softmax probability, without a full softmax
    i1, j1 = _far(h, L.device), _far(w, L.device)
    down = pred.index_select(0, i1)
    mixed = (pred != down) | (pred != pred.index_select(1, j1)) | (pred != down.index_select(1, j1))
    ci, cj = mixed.nonzero(as_tuple=True)
    ci2, cj2 = i1[ci], j1[cj]
    at = torch.stack([ci * w + cj, ci * w + cj2, ci2 * w + cj, ci2 * w + cj2], 1).flatten()
    C = L.shape[0]
    if len(at):  # (reshape copies channels_last logits: only when there is a boundary)
        corners = L.reshape(C, h * w).index_select(1, at).view(C, -1, 4).permute(1, 2, 0).contiguous()
    else:
        corners = L.new_empty((0, 4, C))
    return Reduced(pred.cpu().numpy(), conf.cpu().numpy(), mixed.cpu().numpy(), corners.cpu().numpy())


def _upsampled(logits: torch.Tensor, H: int, W: int) -> LabelMap:
    """The map from every channel upsampled: exact, and the cheaper way for small uploads."""
    s = F.interpolate(logits.float(), size=(H, W), mode="bilinear", align_corners=False)[0]
    top, pred = _max_and_argmax(s)
    conf = s.sub_(top).exp_().sum(0).reciprocal_()
    C, pred = s.shape[0], pred.flatten()
    sums = torch.zeros(C, dtype=torch.float64, device=s.device).index_add_(0, pred, conf.flatten().double())
    counts = torch.bincount(pred, minlength=C)
    return LabelMap(pred.view(H, W).to(torch.uint8).cpu().numpy(), counts.cpu().numpy(), sums.cpu().numpy())


def _max_and_argmax(L: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``L.max(0)``, class by class where the classes are the outer dimension: there torch's
    reduction with indices took 6 ms for 21 x 384 x 384 logits on the CPU, this 4.7. With the
    classes innermost (channels_last logits) its reduction is the faster (4.0 against 10.9 ms).
    Ties go to the first class either way."""
    if L.stride(0) == 1:
        return L.max(0)
    top, pred = L[0].clone(), torch.zeros(L.shape[1:], dtype=torch.int64, device=L.device)
    for c in range(1, L.shape[0]):
        pred.masked_fill_(L[c] > top, c)
        torch.maximum(top, L[c], out=top)
    return top, pred


def _axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output index along one axis: the first source index and the second one's weight, as
    ``F.interpolate(mode="bilinear", align_corners=False)`` computes them (in float32)."""
    f = np.float32
    src = np.maximum((np.arange(n_out, dtype=f) + f(0.5)) * f(n_in / n_out) - f(0.5), f(0))
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    return i0, np.clip(src - i0, 0, 1).astype(f)


def assemble(r: Reduced | LabelMap, H: int, W: int) -> LabelMap:
    if isinstance(r, LabelMap):
        return r
    pred, conf = r.pred, r.conf
    (h, w), C = pred.shape, r.corners.shape[2]
    y0, wy = _axis(H, h)
    x0, wx = _axis(W, w)
    ny = np.bincount(y0, minlength=h)  # output rows in cell row i (y0 never decreases)
    nx = np.bincount(x0, minlength=w)
    labels = np.repeat(np.take(pred.astype(np.uint8), x0, axis=1), ny, axis=0)

    # Inside a region: a cell's sum of upsampled confidence is, over its corners, (the cell's
    # row weights) x (its column weights) x the corner's confidence.
    i1, j1 = _far(h).numpy(), _far(w).numpy()
    s1y, s1x = np.bincount(y0, wy, minlength=h), np.bincount(x0, wx, minlength=w)
    s0y, s0x = ny - s1y, nx - s1x
    conf_d = conf[i1]
    cell_conf = s0y[:, None] * (s0x * conf + s1x * conf[:, j1]) + s1y[:, None] * (s0x * conf_d + s1x * conf_d[:, j1])
    inner = ~r.mixed
    counts = np.bincount(pred[inner], (ny[:, None] * nx)[inner], minlength=C).round().astype(np.int64)
    conf_sums = np.bincount(pred[inner], cell_conf[inner], minlength=C)

    ci, cj = np.nonzero(r.mixed)
    if len(ci):
        # The boundary cells as dense blocks of the largest cell's size, (C, n, by, bx); the pixels
        # past a smaller cell's edge are computed and dropped. Class by class: numpy's reductions
        # over a short last axis were 4x slower than these whole-array passes.
        by, bx = int(ny.max()), int(nx.max())
        oy, ox = np.arange(by), np.arange(bx)
        first_y, first_x = np.cumsum(ny) - ny, np.cumsum(nx) - nx  # a cell's first output row / column
        per_chunk = max(1, CHUNK_FLOATS // (by * bx * C))
        for at in range(0, len(ci), per_chunk):
            i, j = ci[at : at + per_chunk], cj[at : at + per_chunk]
            c = r.corners[at : at + per_chunk].transpose(2, 1, 0)[..., None, None]  # (C, 4, n, 1, 1)
            rows = np.minimum(first_y[i][:, None] + oy, H - 1)  # (n, by)
            cols = np.minimum(first_x[j][:, None] + ox, W - 1)  # (n, bx)
            fy, fx = wy[rows][:, :, None], wx[cols][:, None, :]  # (n, by, 1), (n, 1, bx)
            gy, gx = 1 - fy, 1 - fx
            # F.interpolate's arithmetic, term by term, so that near-ties break as there
            v = [gy * (gx * q[0] + fx * q[1]) + fy * (gx * q[2] + fx * q[3]) for q in c]
            top = v[0].copy()
            k = np.zeros(top.shape, np.intp)
            for q in range(1, C):
                k[v[q] > top] = q
                np.maximum(top, v[q], out=top)
            total = np.zeros_like(top)
            for vq in v:
                total += np.exp(vq - top)
            inside = (oy < ny[i][:, None])[:, :, None] & (ox < nx[j][:, None])[:, None, :]
            k = k[inside]
            Y = np.broadcast_to(rows[:, :, None], inside.shape)[inside]
            X = np.broadcast_to(cols[:, None, :], inside.shape)[inside]
            labels[Y, X] = k
            counts += np.bincount(k, minlength=C)
            conf_sums += np.bincount(k, 1.0 / total[inside], minlength=C)
    return LabelMap(labels, counts, conf_sums)
