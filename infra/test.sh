#!/usr/bin/env bash
# Run Quorum's checks: lint, then every test tier (unit, kernels on the Triton interpreter,
# integration against real Redis / Ray Serve / vLLM CPU servers the fixtures start).
#   bash infra/test.sh [pytest args]     e.g. bash infra/test.sh tests/unit -x
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check . || exit 1
.venv/bin/quorum models prepare || exit 1
.venv/bin/python -m pytest -ra "${@:-tests}"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure, not a pass" >&2
  exit 1
fi
exit "$rc"
