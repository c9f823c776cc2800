#!/usr/bin/env bash
# The wheels benchmarks/gpu_check.py needs beyond CUDA torch, transformers, safetensors, numpy and
# psutil, downloaded into one folder to carry to a GPU machine without network (about 15 MB):
#
#   benchmarks/gpu_wheels.sh [DIR] [PYTHON_VERSION]      # default: gpu-wheels/, this Python's version
#   # on the GPU machine:
#   pip install --no-index --no-deps DIR/*.whl && python benchmarks/gpu_check.py --out gpu_check.jsonl
#
# deepspeed is published as a source package: it is built here into a pure-Python wheel with no
# compiled ops (DS_BUILD_OPS=0; gpu_check needs none), with the torch of this venv. The other
# wheels are binary where they must be (pydantic-core, msgpack, ninja, Pillow), for manylinux
# x86_64 and the given Python version.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-gpu-wheels}
PYVER=${2:-$(.venv/bin/python -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')}
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
mkdir -p "$DIR"
pin() { grep -i "^$1==" requirements/lock-cpu.txt | head -1; }
DS_BUILD_OPS=0 "${PIP[@]}" wheel -q --no-deps --no-build-isolation -w "$DIR" "$(pin deepspeed)"
"${PIP[@]}" download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
  --python-version "$PYVER" -d "$DIR" \
  "$(pin diffusers)" "$(pin hjson)" "$(pin py-cpuinfo)" "$(pin pydantic)" "$(pin pydantic_core)" \
  "$(pin annotated-types)" "$(pin typing-inspection)" "$(pin typing_extensions)" "$(pin msgpack)" \
  "$(pin einops)" "$(pin ninja)" "$(pin importlib_metadata)" "$(pin zipp)" "$(pin pillow)"
du -ch "$DIR"/*.whl | tail -1
ls "$DIR"
