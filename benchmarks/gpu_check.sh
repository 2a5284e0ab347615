#!/usr/bin/env bash
# The prepared GPU check, for one GPU: at most 7 minutes (each step has a time limit; the
# limits add up to 420 s), expected about 5. It has not yet been run on a GPU.
#
# Prints: versions and precision flags; the ae4ad-level device tests with their CUDA cases
# (tests/test_device.py); same-seed reruns compared bit for bit with and without
# deterministic mode, a resume, a bf16 + channels_last run scored again, fused bundles
# with channels_last and bf16 (benchmarks/gpu_reproducibility.py); training images/s and
# peak memory per process for 1 and 4 processes sharing the GPU
# (benchmarks/gpu_throughput.py); fused K = 1, 8, 32 against the same K models run
# separately, the ratio fuse: auto relies on (benchmarks/fused_throughput.py).
#
# Usage, from a plain checkout (nothing installed but the dependencies):
#   bash benchmarks/gpu_check.sh 2>&1 | tee gpu_check.log
# The script itself, end to end on a machine without a GPU (tiny sizes, figures meaningless):
#   GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
STARTED=$SECONDS

step() { # step LIMIT_S COMMAND...: run with a time limit, say how long it took
  local limit=$1 t0=$SECONDS rc
  shift
  echo "== $* (limit ${limit} s)"
  timeout "$limit" "$@"
  rc=$?
  [ "$rc" -eq 0 ] || echo "!! exit code $rc (124: over the time limit)"
  echo "   $((SECONDS - t0)) s"
}

if [ "$DEVICE" = cuda ]; then
  REPRO=(--device cuda)
  THROUGHPUT=(--device cuda --seconds 8)
  FUSED=(--device cuda --models latent paper --ks 1 8 32 --threads 1 --repeats 1 --seconds 2)
else
  REPRO=(--device cpu --image-size 16 --epochs 2 --n-train 64)
  THROUGHPUT=(--device cpu --seconds 1 --image-size 16 --batch 16)
  FUSED=(--device cpu --models latent --ks 1 8 --threads 1 --repeats 1 --seconds 0.5)
fi

step 15 "$PY" - "$DEVICE" <<'EOF'
import platform, sys
import torch
device = sys.argv[1]
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}")
try:
    import ray
    print(f"ray {ray.__version__}")
except ImportError:
    print("ray not installed")
if device == "cuda":
    assert torch.cuda.is_available(), "PyTorch sees no CUDA GPU"
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability {p.major}.{p.minor}, "
          f"{torch.cuda.device_count()} visible, bf16 supported {torch.cuda.is_bf16_supported()}")
b = torch.backends
conv = getattr(getattr(b.cudnn, "conv", None), "fp32_precision", None)
if conv is not None:
    print(f"fp32 precision: cuDNN conv {conv}, matmul {b.cuda.matmul.fp32_precision} "
          "(tf32 = TensorFloat-32, ieee = full float32)")
else:
    print(f"TF32: cuDNN {b.cudnn.allow_tf32}, matmul {b.cuda.matmul.allow_tf32}")
print(f"float32 matmul precision {torch.get_float32_matmul_precision()}, cudnn.benchmark "
      f"{b.cudnn.benchmark}, cudnn.deterministic {b.cudnn.deterministic}, deterministic "
      f"algorithms {torch.are_deterministic_algorithms_enabled()}")
EOF

step 80 "$PY" -m pytest tests/test_device.py -q -p no:cacheprovider
step 100 "$PY" benchmarks/gpu_reproducibility.py "${REPRO[@]}"
step 35 "$PY" benchmarks/gpu_throughput.py "${THROUGHPUT[@]}" --procs 1 --header
step 55 "$PY" benchmarks/gpu_throughput.py "${THROUGHPUT[@]}" --procs 4
step 55 "$PY" benchmarks/gpu_throughput.py "${THROUGHPUT[@]}" --procs 4 --bf16
step 80 "$PY" benchmarks/fused_throughput.py "${FUSED[@]}"
echo "gpu_check: $((SECONDS - STARTED)) s in all"
