# segcam: two commands set up a fresh machine (deps, install), one runs the demo, one the tests.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
APT_PKGS := redis-server chromium chromium-driver

.PHONY: deps install demo test up lint format train-demo bench profile trace gpu-kit clean

deps:  ## system packages the stack and the tests need (Debian/Ubuntu; skipped when present)
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	else echo "system packages present:$(APT_PKGS)"; fi

$(BIN)/python:
	$(PY) -m venv $(VENV)

install: $(BIN)/python  ## virtualenv with the gateway, the worker (torch, grad-cam), Flower and dev tools
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[worker,flower,dev]"

demo:  ## start Redis (if needed), API and a worker; submit real jobs; write results to demo_out/
	$(BIN)/segcam demo --out demo_out

up:  ## run the stack in the foreground (API :8000, Flower :5555)
	$(BIN)/segcam up

test:  ## the whole suite: unit, explanation, integration (real API + Redis + worker), static
	$(BIN)/python -m pytest -q

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format:
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench:  ## the benchmark: limit vs segcam vs direct FastAPI, overload, gateway, memory, batching (~20-25 min)
	$(BIN)/python -m benchmarks.run

profile:  ## where one job's time goes (pyinstrument + hop-by-hop timeline)
	$(BIN)/python -m benchmarks.profile_job

trace:  ## finer hops from timestamps inside the API and worker processes (Celery delivery split)
	$(BIN)/python -m benchmarks.hop_trace

gpu-kit:  ## pack .gpu/ for a GPU machine without network; there: bash benchmarks/gpu/run.sh (docs/performance.md)
	PYTHON=$(BIN)/python bash benchmarks/gpu/kit.sh

train-demo:  ## retrain the demo model (about 10 minutes on 2 cores)
	$(BIN)/python -m training.train_demo --out models/store/shapes/1

clean:
	rm -rf demo_out .segcam .pytest_cache .ruff_cache .gpu
