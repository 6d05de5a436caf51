"""Docker can't run here, so the deployment files are checked statically: the compose file
against the compose spec, the Dockerfiles with hadolint, and their commands against the
ones the integration tests run (stack.local)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stack.local import API_CMD, FLOWER_CMD, WEBHOOK_CMD, WORKER_CMD
from tests.conftest import ROOT

pytestmark = pytest.mark.static

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def _bin(name: str) -> str:
    exe = shutil.which(name) or str(Path(sys.executable).parent / name)
    assert Path(exe).exists(), f"{name} is not installed (it is a dev dependency)"
    return exe


def test_compose_file_validates_against_the_compose_spec():
    out = subprocess.run(
        [_bin("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(ROOT / "docker-compose.yml")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("dockerfile", ["Dockerfile.api", "Dockerfile.worker"])
def test_dockerfiles_pass_hadolint(dockerfile):
    out = subprocess.run([_bin("hadolint"), str(ROOT / dockerfile)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def _cmd(dockerfile: str) -> list[str]:
    line = [ln for ln in (ROOT / dockerfile).read_text().splitlines() if ln.startswith("CMD ")][-1]
    return json.loads(line[4:])


def test_containers_run_the_commands_the_integration_tests_run():
    assert SERVICES["api"]["command"] == API_CMD == _cmd("Dockerfile.api")
    assert SERVICES["worker"]["command"] == WORKER_CMD == _cmd("Dockerfile.worker")
    assert SERVICES["worker-cpu"]["command"] == WORKER_CMD
    assert SERVICES["webhooks"]["command"] == WEBHOOK_CMD
    assert SERVICES["flower"]["command"][: len(FLOWER_CMD)] == FLOWER_CMD


def test_redis_is_private_persistent_and_never_evicts():
    redis = SERVICES["redis"]
    assert "ports" not in redis
    cmd = " ".join(redis["command"])
    assert "--appendonly yes" in cmd and "--maxmemory-policy noeviction" in cmd
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert COMPOSE["networks"]["backend"]["internal"] is True
    assert SERVICES["api"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_gpu_worker_reserves_gpus_and_the_cpu_variant_is_a_profile():
    devices = SERVICES["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert SERVICES["worker"]["environment"]["SEGCAM_DEVICE"] == "cuda"
    assert SERVICES["worker-cpu"]["profiles"] == ["cpu"]
    assert SERVICES["worker-cpu"]["environment"]["SEGCAM_DEVICE"] == "cpu"
    assert "deploy" not in SERVICES["worker-cpu"]


def test_flower_requires_basic_auth_and_persists_state():
    flower = SERVICES["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert "--persistent=True" in flower["command"]


def test_api_image_holds_no_torch_and_no_worker_code():
    text = (ROOT / "Dockerfile.api").read_text()
    assert not re.search(r"COPY\s+worker\b", text)
    installs = " ".join(ln for ln in text.splitlines() if "pip install" in ln)
    assert "[worker]" not in installs and "torch" not in installs and "[flower]" in installs
    assert "[worker]" in (ROOT / "Dockerfile.worker").read_text()


def test_gateway_installs_without_torch_and_the_worker_extra_pins_it():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"]).lower()
    assert "torch" not in base and "grad-cam" not in base
    worker = project["optional-dependencies"]["worker"]
    assert "torch==2.14.1" in worker and "torchvision==0.29.1" in worker
    assert any(d.startswith("grad-cam") for d in worker)


def test_worker_image_can_bake_pretrained_weights_with_the_tested_import_path():
    text = (ROOT / "Dockerfile.worker").read_text()
    assert 'ARG PRETRAINED_ARCH=""' in text
    assert 'python -m worker.pretrained "${PRETRAINED_ARCH}"' in text
    out = subprocess.run(
        [sys.executable, "-m", "worker.pretrained", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0
    for arch in ("deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50", "fcn_resnet50", "lraspp_mobilenet_v3_large"):
        assert arch in out.stdout


def test_every_segcam_variable_the_compose_file_sets_is_a_setting():
    """Settings ignore unknown variables, so a misspelt one in compose would be dropped in silence."""
    from shared.settings import Settings

    known = {f"SEGCAM_{name.upper()}" for name in Settings.model_fields}
    named: set[str] = set()
    for service in [COMPOSE["x-segcam-env"], *(s.get("environment", {}) for s in COMPOSE["services"].values())]:
        named |= {k for k in service if k.startswith("SEGCAM_")}
    assert named - known == set()
    api = COMPOSE["services"]["api"]["environment"]  # what a deployment turns on without editing the file
    assert {"SEGCAM_API_KEY_HASHES", "SEGCAM_RATE_LIMIT_PER_MINUTE", "SEGCAM_CORS_ORIGINS"} <= set(api)
