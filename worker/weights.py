"""What people save as "weights", read safely, and why a file does not fit, said in one line.

``segcam models import`` is handed whatever a training script wrote: a ``state_dict``, but
as often a checkpoint (``{"model": state_dict, "optimizer": ..., "epoch": 3}``), the keys of
a ``DistributedDataParallel`` (``module.``) or ``torch.compile`` (``_orig_mod.``) wrapper, or
a whole pickled model. The first three are unwrapped here, and the store gets a plain
``state_dict`` (the worker's loader stays strict and simple). A pickled model is refused with
what to save instead: unpickling it would run code from the file, which ``weights_only``
exists to prevent. A strict load's error lists every missing key (hundreds, for a wrong
architecture); ``mismatch`` names the cause instead.
"""

from __future__ import annotations

import argparse
import pickle
from collections.abc import Callable
from pathlib import Path

import torch

# Where training scripts put the model's state in a checkpoint, most specific first.
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net", "network", "weights")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel / DataParallel, torch.compile
# Classes a checkpoint may hold beside the tensors that are plain attribute bags, safe to rebuild:
# torchvision's reference train.py saves its argparse Namespace as checkpoint["args"].
SAFE_GLOBALS = [argparse.Namespace]


class WeightsError(ValueError):
    pass


def _is_state(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors to load, and what was done to get them (empty: the file was a plain state_dict)."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        wanted = _global_in(e)
        if wanted is None:  # not a pickle of ours at all: random bytes, another format
            raise WeightsError(f"{path.name} is not a file torch.save wrote ({_unpickler_reason(e)})") from None
        raise WeightsError(
            f"{path.name} holds pickled Python objects (a {wanted}), which segcam does not unpickle: "
            "loading them would run code from the file. A whole model saved with torch.save(model), or a "
            "checkpoint that carries objects beside its tensors (a config class, a Lightning AttributeDict), "
            "is like that. Save the weights alone, torch.save(model.state_dict(), 'weights.pt') (from such a "
            "checkpoint, where you trust it: torch.save(checkpoint['model'], 'weights.pt')), or export "
            "TorchScript (torch.jit.script or trace) and import that"
        ) from None
    except FileNotFoundError:
        raise
    except Exception as e:  # torch's readers fail in many ways on other files: RuntimeError, EOFError, IndexError
        reason = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise WeightsError(f"{path.name} is not a file torch.save wrote ({reason})") from None
    notes: list[str] = []
    if not _is_state(obj) and isinstance(obj, dict):
        for key in CHECKPOINT_KEYS:
            if _is_state(obj.get(key)):
                beside = sorted(map(str, set(obj) - {key}))
                notes.append(f"took checkpoint[{key!r}] (beside {', '.join(beside[:6])}{', ...' * (len(beside) > 6)})")
                obj = obj[key]
                break
    if not _is_state(obj):
        found = type(obj).__name__
        if isinstance(obj, dict):
            found = f"a dict with keys {', '.join(sorted(map(str, obj))[:8])}"
        raise WeightsError(
            f"{path.name} is not a state_dict (it holds {found}): save model.state_dict(), "
            f"or a checkpoint dict with it under one of {', '.join(CHECKPOINT_KEYS)}"
        )
    for prefix in WRAPPER_PREFIXES * 2:  # DDP around torch.compile, or the other way round
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix) :]: v for k, v in obj.items()}
            notes.append(f"removed the {prefix!r} key prefix")
    return obj, notes


def strip_owner_prefix(state: dict[str, torch.Tensor], fits: Callable[[], list[set[str]]]) -> tuple[dict, str | None]:
    """Keys saved from a module that held the network as an attribute (``self.model = ...``, a
    training wrapper or a LightningModule) all start with that attribute's name: removed when
    what is left is exactly one of the key sets ``fits()`` gives (the architecture's, with or
    without its auxiliary head; built only when every key shares a first name). Anything less
    certain is left for the strict load to refuse."""
    first = {k.split(".", 1)[0] for k in state}
    if len(first) != 1 or not all("." in k for k in state):
        return state, None
    keysets = fits()
    if any(set(state) == keys for keys in keysets):
        return state, None  # a network whose own keys share a first name
    prefix = f"{first.pop()}."
    stripped = {k[len(prefix) :]: v for k, v in state.items()}
    if any(set(stripped) == keys for keys in keysets):
        return stripped, f"removed the {prefix!r} key prefix"
    return state, None


def _global_in(e: Exception) -> str | None:
    """The class or function the file wanted unpickled, as torch's refusal names it."""
    text = str(e)
    return text.split("GLOBAL ", 1)[1].split(" ", 1)[0] if "GLOBAL " in text else None


def _unpickler_reason(e: Exception) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    after = [lines[i + 1] for i, line in enumerate(lines[:-1]) if line.endswith("WeightsUnpickler error:")]
    return (after or lines or [type(e).__name__])[0][:160]


def mismatch(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], num_classes: int) -> str | None:
    """Why ``given`` does not load strictly into a module whose state is ``expected``, or None."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [k for k in expected if k in given and tuple(given[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or shapes):
        return None
    # The classifier's last layer: its rows are the classes, so only its first dimension differs.
    heads = [k for k in shapes if expected[k].shape[0] == num_classes and expected[k].shape[1:] == given[k].shape[1:]]
    if heads and len(heads) == len(shapes) and not (missing or unexpected):
        k = heads[0]
        return (
            f"the weights have {given[k].shape[0]} classes ({k} has {given[k].shape[0]} rows) but the labels "
            f"list {num_classes}: give one label per class, background included"
        )
    parts = []
    if missing:
        parts.append(f"{len(missing)} of its {len(expected)} keys are missing ({', '.join(missing[:3])}, ...)")
    if unexpected:
        parts.append(f"{len(unexpected)} keys are not the architecture's ({', '.join(unexpected[:3])}, ...)")
    if shapes:
        k = shapes[0]
        parts.append(
            f"{len(shapes)} tensors have other shapes ({k}: {list(given[k].shape)}, expected {list(expected[k].shape)})"
        )
    hint = " (another architecture's weights?)" if missing and unexpected else ""
    return "; ".join(parts) + hint
