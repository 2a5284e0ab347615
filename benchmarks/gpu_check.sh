#!/usr/bin/env bash
# One prepared GPU check (about 6 minutes on one GPU): training images/s of the paper AE
# (64x64, batch 64, synthetic tensors) with 1, 4 and 8 processes sharing the GPU, with and
# without bf16 autocast and torch.compile. Prints a table.
# Usage, from the repository root with the project installed: bash benchmarks/gpu_check.sh
set -euo pipefail
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))"
printf '%5s %5s %7s %12s %14s\n' procs bf16 compile "total img/s" "per-proc img/s"
for procs in 1 4 8; do
  for bf16 in "" "--bf16"; do
    for compile in "" "--compile"; do
      timeout 120 python benchmarks/gpu_throughput.py --procs "$procs" $bf16 $compile \
        --seconds "$SECONDS_PER_RUN" || echo "procs=$procs $bf16 $compile failed or timed out"
    done
  done
done
# Fused trials (ae4ad.fused.FusedAE): K paper AEs (latent_dim cycling 1..128) as one grouped
# module, K = 1, 8, 32, fp32, against the processes above (total img/s).
echo "fused: K paper AEs in one module (fp32), total img/s"
timeout 240 python benchmarks/fused_throughput.py --device cuda --models paper --ks 1 8 32 \
  --threads 1 --no-separate --repeats 1 --seconds "$SECONDS_PER_RUN" || echo "fused run failed or timed out"
