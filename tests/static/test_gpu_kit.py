"""The GPU kit (``benchmarks/gpu/kit.sh``) packs, for a machine without network, the wheels of
what its image lacks. A GPU run is rare and short, so it must run the versions the suite
tests: a pin bumped in pyproject and not in the kit would measure other code, or fail to
import there, with no session able to find out in time."""

from __future__ import annotations

import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

pytestmark = pytest.mark.static

# What the GPU image brings itself (kit.sh's header says so); the kit packs everything else.
IMAGE_BRINGS = {"torch", "torchvision", "numpy", "pillow", "httpx"}


def kit_pins() -> dict[str, str]:
    text = (ROOT / "benchmarks" / "gpu" / "kit.sh").read_text()
    downloads = re.search(r"^PKGS=\((.*?)^\)", text, re.S | re.M)
    built = re.search(r"-m pip wheel[^\n]*", text)
    assert downloads and built, "kit.sh no longer has its PKGS list and its pip wheel line"
    pins = re.findall(r"([A-Za-z0-9_.\-]+)==(\S+)", downloads.group(1) + " " + built.group(0))
    return {canonicalize_name(n): v for n, v in pins}


def project_requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + project["optional-dependencies"]["worker"]


def test_the_kit_pins_every_runtime_dependency_the_image_lacks_at_the_projects_version():
    kit = kit_pins()
    checked = 0
    for req in map(Requirement, project_requirements()):
        name = canonicalize_name(req.name)
        if name in IMAGE_BRINGS:
            continue
        assert name in kit, f"{name} ({req}) is a runtime dependency that the GPU kit does not pack"
        pins = [s.version for s in req.specifier if s.operator == "=="]
        assert pins, f"{req}: a dependency the kit packs needs an exact pin in pyproject, as the kit has"
        assert kit[name] == pins[0], f"kit.sh packs {name}=={kit[name]}, pyproject pins {req}"
        checked += 1
    assert checked >= 8  # fastapi, uvicorn, python-multipart, celery, kombu, redis, pydantic(-settings), grad-cam


def test_the_kit_parser_sees_the_pins_it_must_compare():
    kit = kit_pins()
    assert kit["grad-cam"] == "1.5.7" and kit["starlette"] and kit["pydantic-core"]
