#!/usr/bin/env bash
# Packs what a GPU machine without network needs to run segcam's GPU benchmark, into .gpu/
# (git-ignored): wheels of the Python packages its image lacks, for its Python (3.12), and a
# redis-server with the libraries it links that an image may lack. The machine brings torch,
# torchvision, numpy, Pillow, httpx and the CUDA stack itself. Then, on that machine, run
# benchmarks/gpu/run.sh (it installs the wheels, starts Redis and writes the results to $OUT).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
TARGET=${KIT_PYTHON_VERSION:-3.12}  # the GPU image's Python
rm -rf .gpu && mkdir -p .gpu/whl .gpu/bin .gpu/lib
# The gateway's and the worker's packages that the image lacks, at the versions pyproject pins
# (and what they need). grad-cam and ttach publish no wheel for every version: built here.
PKGS=(
  fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 httptools==0.9.0 python-multipart==0.0.34
  celery==5.7.0 kombu==5.7.0 billiard==4.3.2 vine==5.1.0 amqp==5.4.2 click-didyoumean==0.3.1
  click-plugins==1.1.1.2 click-repl==0.4.1 prompt_toolkit==3.0.53 wcwidth==0.9.4 tzlocal==5.4.5
  redis==8.1.0 pydantic==2.14.4 pydantic_core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4
  typing-inspection==0.4.5 annotated-types==0.8.0 opentelemetry-api==1.45.2
)
PLATFORMS=()
for n in 2_28 2_27 2_17 2014 1; do
  case $n in 2014|1) PLATFORMS+=(--platform "manylinux${n}_x86_64");; *) PLATFORMS+=(--platform "manylinux_${n}_x86_64");; esac
done
for p in 2_31 2_34 2_35 2_39; do PLATFORMS+=(--platform "manylinux_${p}_x86_64"); done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$TARGET" --implementation cp \
  "${PLATFORMS[@]}" -d .gpu/whl "${PKGS[@]}"
"$PY" -m pip wheel -q --no-deps -w .gpu/whl grad-cam==1.5.7 ttach==0.0.3
# Redis: the binary and the libraries of its that are not in every image.
cp "$(command -v redis-server)" .gpu/bin/
for lib in $(ldd "$(command -v redis-server)" | awk '/=>/ {print $3}'); do
  case "$(basename "$lib")" in libc.so*|libm.so*|libstdc++*|libgcc_s*|ld-linux*) ;; *) cp -L "$lib" .gpu/lib/ ;; esac
done
du -sh .gpu
ls .gpu/whl
