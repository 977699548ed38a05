#!/usr/bin/env bash
# Multi-node training with torchrun, no scheduler: run this on every node with its NODE_RANK.
#   MASTER_ADDR=10.0.0.1 NNODES=2 NODE_RANK=0 GPUS_PER_NODE=8 scripts/train_multinode.sh model=qwen2.5-7b deepspeed=zero2 \
#       data.path=/shared/data output_dir=/shared/runs/wpm7b
# (on the other node the same command with NODE_RANK=1). On CPU-only machines GPUS_PER_NODE is the number of ranks per node.
# The same overrides on every node; output_dir on a filesystem every node sees.
set -euo pipefail
: "${MASTER_ADDR:?set MASTER_ADDR to node 0's address}" "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK (0..NNODES-1)}"
exec torchrun --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="${GPUS_PER_NODE:-8}" \
    --master_addr="$MASTER_ADDR" --master_port="${MASTER_PORT:-29500}" -m worldpm.train "$@"
