"""The model store: a directory of immutable model versions, readable without torch.

Layout::

    {model_dir}/{name}/{version}/manifest.json   # labels, input size, sha256 of the weights, ...
    {model_dir}/{name}/{version}/weights.pt      # (or the file the manifest names)
    {model_dir}/{name}/aliases.json              # {"production": "3", "latest": "4"}

The gateway reads manifests to validate a job (model, class) before queueing it; the
worker reads the same manifest to load the weights. Names and versions are checked
against a strict pattern so no request can reach a path outside the store.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, PositiveInt, ValidationError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
DEFAULT_ALIASES = ("production", "latest")


class ModelNotFound(LookupError):
    pass


class StoreError(ValueError):
    """A change the store refuses: overwriting a version, deleting one still in use, ..."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json_atomic(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


_Mean = Annotated[float, Field(allow_inf_nan=False)]
_Std = Annotated[float, Field(gt=0, allow_inf_nan=False)]  # every job divides by it


class Normalization(BaseModel):
    mean: tuple[_Mean, _Mean, _Mean]
    std: tuple[_Std, _Std, _Std]


class ModelManifest(BaseModel):
    name: str = Field(pattern=NAME_RE.pattern)
    version: str = Field(pattern=VERSION_RE.pattern)
    architecture: str
    format: str = "state_dict"  # or "torchscript"
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    labels: list[str] = Field(min_length=2)
    input_size: tuple[PositiveInt, PositiveInt]
    normalization: Normalization
    target_layer: str | None = None  # None: the architecture's default
    weights_file: str = "weights.pt"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: datetime | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def class_index(self, value: str) -> int:
        """Resolve a class given as an index or a label; raises ValueError naming the choices."""
        value = value.strip()
        if re.fullmatch(r"-?\d+", value):
            idx = int(value)
            if not 0 <= idx < len(self.labels):
                raise ValueError(
                    f"class index {value[:20]} is out of range for model '{self.name}' (0..{len(self.labels) - 1})"
                )
            return idx
        try:
            return self.labels.index(value)
        except ValueError:
            raise ValueError(
                f"unknown class '{value[:64]}' for model '{self.name}'; labels: {', '.join(self.labels)}"
            ) from None


def _version_key(v: str) -> tuple:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[._-]", v))


def _cached(fn):
    """Memoise a read for ``cache_ttl_s``: the gateway resolves a model on every submission,
    and re-reading manifests from disk each time would cost more than the rest of the request."""

    @functools.wraps(fn)
    def wrapper(self, *args):
        if self.cache_ttl_s <= 0:
            return fn(self, *args)
        key = (fn.__name__, *args)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self.cache_ttl_s:
            return hit[1]
        value = fn(self, *args)
        self._cache[key] = (now, value)
        return value

    return wrapper


class ModelStore:
    def __init__(self, root: Path, cache_ttl_s: float = 0.0) -> None:
        self.root = Path(root)
        self.cache_ttl_s = cache_ttl_s  # changes made elsewhere show up within this time
        self._cache: dict[tuple, tuple[float, Any]] = {}

    @_cached
    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and NAME_RE.match(p.name))

    @_cached
    def versions(self, name: str) -> list[str]:
        d = self._model_dir(name)
        vs = [
            p.name for p in d.iterdir() if p.is_dir() and VERSION_RE.match(p.name) and (p / "manifest.json").is_file()
        ]
        return sorted(vs, key=_version_key)

    @_cached
    def aliases(self, name: str) -> dict[str, str]:
        f = self._model_dir(name) / "aliases.json"
        return json.loads(f.read_text()) if f.is_file() else {}

    @_cached
    def traffic(self, name: str) -> dict[str, int]:
        """The A/B table for jobs that name the model without a version: {alias or version: weight}."""
        f = self._model_dir(name) / "traffic.json"
        return json.loads(f.read_text()) if f.is_file() else {}

    def default_version(self, name: str) -> str:
        aliases = self.aliases(name)
        versions = self.versions(name)
        if not versions:
            raise ModelNotFound(f"model '{name}' has no versions")
        return next((aliases[a] for a in DEFAULT_ALIASES if a in aliases), versions[-1])

    # --- changes (the admin CLI; the gateway and workers only read) ---

    def add_version(
        self, manifest: ModelManifest, weights: Path, extra_files: dict[str, str] | None = None
    ) -> ModelManifest:
        """Copy weights in and write the manifest, as one rename: a version appears whole or not at all,
        and an existing version is never overwritten."""
        self._cache.clear()
        self.check_new_version(manifest.name, manifest.version)
        model_dir = self.root / manifest.name
        model_dir.mkdir(parents=True, exist_ok=True)
        final = model_dir / manifest.version
        staging = Path(tempfile.mkdtemp(dir=model_dir, prefix=f".import-{manifest.version}-"))
        try:
            shutil.copyfile(weights, staging / manifest.weights_file)
            manifest = manifest.model_copy(update={"sha256": sha256_file(staging / manifest.weights_file)})
            (staging / "manifest.json").write_text(manifest.model_dump_json(indent=2) + "\n")
            for fname, text in (extra_files or {}).items():
                (staging / fname).write_text(text)
            os.rename(staging, final)  # fails if the version appeared meanwhile
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return manifest

    def check_new_version(self, name: str, version: str) -> None:
        """Refuse a name, or a version, that an import could not write: cheap, so that an import
        fails on it before verifying the weights (which loads torch and runs the model)."""
        if not NAME_RE.match(name):
            raise StoreError(f"invalid model name '{name[:64]}': lowercase letters, digits, '_' and '-', at most 64")
        if not VERSION_RE.match(version):
            raise StoreError(f"invalid version '{version[:64]}': letters, digits, '.', '_' and '-', at most 64")
        if (self.root / name / version).exists():
            raise StoreError(f"{name}:{version} already exists; versions are immutable, import under a new version")

    def next_version(self, name: str) -> str:
        try:
            numeric = [int(v) for v in self.versions(name) if v.isdigit()]
        except ModelNotFound:
            numeric = []
        return str(max(numeric, default=0) + 1)

    def set_alias(self, name: str, version: str, alias: str) -> None:
        self._cache.clear()
        if not ALIAS_RE.match(alias):
            raise StoreError(
                f"invalid alias '{alias[:40]}': lowercase letters, digits, '-' and '_', starting with a letter"
            )
        versions = self.versions(name)
        if alias in versions:
            raise StoreError(f"'{alias}' is a version of {name}; an alias cannot shadow it")
        if version not in versions:
            raise StoreError(f"model '{name}' has no version '{version}'")
        aliases = self.aliases(name)
        aliases[alias] = version
        _write_json_atomic(self._model_dir(name) / "aliases.json", aliases)

    def set_traffic(self, name: str, table: dict[str, int]) -> None:
        self._cache.clear()
        aliases, versions = self.aliases(name), self.versions(name)
        for key, weight in table.items():
            if key not in aliases and key not in versions:
                raise StoreError(f"traffic key '{key}' is neither an alias nor a version of {name}")
            if not isinstance(weight, int) or weight < 0:
                raise StoreError(f"traffic weight for '{key}' must be a non-negative integer")
        path = self._model_dir(name) / "traffic.json"
        if not table or sum(table.values()) == 0:
            path.unlink(missing_ok=True)
            return
        _write_json_atomic(path, table)

    def delete_version(self, name: str, version: str) -> None:
        self._cache.clear()
        if version not in self.versions(name):
            raise StoreError(f"model '{name}' has no version '{version}'")
        pointing = sorted(a for a, v in self.aliases(name).items() if v == version)
        if pointing:
            raise StoreError(
                f"{name}:{version} is still the target of alias(es) {', '.join(pointing)}; move them first"
            )
        if version in self.traffic(name):
            raise StoreError(f"{name}:{version} still receives traffic; change the traffic table first")
        shutil.rmtree(self._model_dir(name) / version)

    def resolve(self, ref: str) -> ModelManifest:
        """``name``, ``name:version`` or ``name:alias`` to a manifest; raises ModelNotFound.

        A miss is read again past the cache before it is refused: a version or alias made a
        moment ago (``segcam models import``, then a job naming it) is found, not refused for
        up to ``cache_ttl_s``; a hit, the usual case, still costs no disk read."""
        try:
            return self._resolve(ref)
        except ModelNotFound:
            if not self.cache_ttl_s or not self._forget(ref.partition(":")[0]):
                raise
            return self._resolve(ref)

    def _forget(self, name: str) -> bool:
        """Drop the cached reads of one model; False when there were none (nothing can be stale)."""
        stale = [k for k in self._cache if k[1:2] == (name,)]
        for k in stale:
            del self._cache[k]
        return bool(stale)

    def _resolve(self, ref: str) -> ModelManifest:
        name, _, tag = ref.partition(":")
        versions = self.versions(name)
        if not versions:
            raise ModelNotFound(f"model '{name}' has no versions")
        aliases = self.aliases(name)
        tag = tag or self.default_version(name)
        version = aliases.get(tag, tag)
        if version not in versions:
            raise ModelNotFound(f"model '{name}' has no version or alias '{tag[:64]}'")
        return self.manifest(name, version)

    @_cached
    def manifest(self, name: str, version: str) -> ModelManifest:
        if not VERSION_RE.match(version):
            raise ModelNotFound(f"invalid version '{version[:64]}'")
        f = self._model_dir(name) / version / "manifest.json"
        if not f.is_file():
            raise ModelNotFound(f"model '{name}' has no version '{version}'")
        try:
            return ModelManifest.model_validate_json(f.read_text())
        except ValidationError as e:  # edited by hand, or written before a check existed
            raise ModelNotFound(f"model {name}:{version} has an invalid manifest: {e.errors()[0]['msg']}") from None

    def weights_path(self, m: ModelManifest) -> Path:
        path = (self._model_dir(m.name) / m.version / m.weights_file).resolve()
        if self.root.resolve() not in path.parents:
            raise ModelNotFound(f"weights file of {m.ref} lies outside the model store")
        return path

    def _model_dir(self, name: str) -> Path:
        if not NAME_RE.match(name):
            raise ModelNotFound(f"invalid model name '{name[:64]}'")
        d = self.root / name
        if not d.is_dir():
            raise ModelNotFound(f"unknown model '{name}'")
        return d


def read_labels(path: Path) -> list[str]:
    """A labels file: one label per line, or a JSON list."""
    text = Path(path).read_text().strip()
    labels = json.loads(text) if text.startswith("[") else [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) and x for x in labels):
        raise StoreError(f"{path}: expected at least two non-empty labels")
    return labels
