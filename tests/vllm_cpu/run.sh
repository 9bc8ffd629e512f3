#!/usr/bin/env bash
# bash tests/vllm_cpu/run.sh [pytest arguments]
#
# The vLLM tests, from a fresh clone: builds the separate environment .venv-vllm (see
# setup_env.sh; about 2 minutes, 4 GB) unless it is already built from this very setup script,
# then runs pytest tests/vllm_cpu in it (about 2 minutes on 2 cores). The main .venv is untouched.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VLLM_VENV:-.venv-vllm}
STAMP="$VENV/.align-setup"
WANT=$(sha256sum tests/vllm_cpu/setup_env.sh | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    VLLM_VENV="$VENV" bash tests/vllm_cpu/setup_env.sh
fi
exec "$VENV/bin/python" -m pytest tests/vllm_cpu "$@"
