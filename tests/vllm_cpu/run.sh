#!/usr/bin/env bash
# bash tests/vllm_cpu/run.sh [pytest arguments]
#
# The vLLM tests, from a fresh clone: builds the separate environment .venv-vllm (see
# setup_env.sh; about 2 minutes, 4 GB) unless it is already built from this very setup script
# and launch/constraints-gpu.txt, then runs in it pytest tests/vllm_cpu and a fast part of the
# main suite (2.5 minutes of the 11 the whole took on 2 cores shared with other jobs; less on
# an idle machine). The transformers that vLLM pins, which GPU users with the `vllm` extra get,
# is older than the main environment's, so the code that depends on transformers' version
# (trl's config fields, attention checks, the spec, a short training run of each stage) runs
# against it too. The main .venv is untouched.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VLLM_VENV:-.venv-vllm}
STAMP="$VENV/.align-setup"
WANT=$(cat tests/vllm_cpu/setup_env.sh launch/constraints-gpu.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    VLLM_VENV="$VENV" bash tests/vllm_cpu/setup_env.sh
fi
MAIN_SUBSET=(tests/test_attention.py tests/test_guards.py tests/test_source.py
             tests/test_fields.py tests/test_train.py::test_stage_trains_every_trainable_weight)
exec "$VENV/bin/python" -m pytest -m "not slow" tests/vllm_cpu "${MAIN_SUBSET[@]}" "$@"
