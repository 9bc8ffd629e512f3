#!/bin/bash
# launch/vllm_server.sh GEN_GPUS TRAIN_GPUS align/grpo.py [overrides]
#   e.g. launch/vllm_server.sh 2 6 align/grpo.py experiment=qwen_gsm8k_grpo
#
# GRPO with vLLM in server mode on one node: `trl vllm-serve` generates on the first GEN_GPUS
# GPUs, training runs on the next TRAIN_GPUS, and trl sends the updated weights (LoRA merged)
# to the server after each optimisation step over NCCL. Needs the `vllm` extra (vLLM
# 0.22-0.31 for trl 1.16). For a server on a dedicated node, start the `trl vllm-serve` line
# there and pass trainer.vllm_server_base_url=http://<host>:8000 to training instead.
set -euo pipefail
GEN=${1:?number of GPUs for generation}; TRAIN=${2:?number of GPUs for training}; shift 2
SCRIPT=${1:?align/<stage>.py}; shift
MODEL=${VLLM_MODEL:?set VLLM_MODEL to the model id or path that training starts from}
PORT=${VLLM_PORT:-8000}

GEN_IDS=$(seq -s, 0 $((GEN - 1)))
TRAIN_IDS=$(seq -s, "$GEN" $((GEN + TRAIN - 1)))

CUDA_VISIBLE_DEVICES=$GEN_IDS trl vllm-serve --model "$MODEL" --tensor-parallel-size "$GEN" \
    --port "$PORT" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT

# Wait for the server (trl's client would also wait, but a clear message helps here).
for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$PORT/health/" >/dev/null && break
    kill -0 $SERVER 2>/dev/null || { echo "trl vllm-serve exited; see its output above" >&2; exit 1; }
    sleep 5
done

CUDA_VISIBLE_DEVICES=$TRAIN_IDS accelerate launch --config_file "${ACCELERATE_CONFIG:-launch/zero2.yaml}" \
    --num_processes "$TRAIN" "$SCRIPT" \
    trainer.use_vllm=true trainer.vllm_mode=server \
    trainer.vllm_server_base_url="http://127.0.0.1:$PORT" "$@"
