#!/usr/bin/env bash
# One-GPU check of medssl, about 6-8 minutes: run from anywhere on a machine with the checkout,
# torch with CUDA and medssl's dependencies installed. Downloads nothing: the editable install
# uses the installed setuptools (no build isolation) and no dependency resolution.
#
#   bash benchmarks/gpu.sh 2>&1 | tee gpu.log
#
# Prints: (1) volumes/s at 121x145x121 for ResNet-18 and DenseNet121, fp32, bf16 autocast +
# channels_last_3d, fp16 + GradScaler + channels_last_3d (engine and bare loop, GFLOP/s vs a
# conv3d peak, loader supply, memory per volume and largest batch in 24 GB / 80 GB);
# (2) NTXentLoss / YAwareLoss at 2N = 8192; (3) faiss-gpu vs faiss-cpu k-means on 50,000 x 256;
# (4) a one-process NCCL run of `medssl pretrain yaware_age --smoke`; (5) an fp16 resume that must
# end bit-exact with the uninterrupted run, and the GradScaler state in its checkpoint; (6) Barlow
# Twins against lightly's formula in float32 and bfloat16 (time ratios, gradient errors); (7) a short
# pre-training with views drawn in DataLoader workers vs on the GPU (views.device), and the GPU's busy fraction.
# Each part has its own time limit; a part that fails or times out is reported and the next runs.
set -u
cd "$(dirname "$0")/.."
pip install -q --no-deps --no-build-isolation -e . || echo "pip install failed: using the checkout through PYTHONPATH"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the checkout, whatever medssl is installed
export OMP_WAIT_POLICY=PASSIVE
WORK="$(mktemp -d)"
export MEDSSL_CACHE="$WORK/cache"  # the smoke runs' synthetic cohort stays out of ~/.cache
trap 'rm -rf "$WORK"' EXIT
OUT="${GPU_CHECK_OUT:-$PWD/gpu-check}"
mkdir -p "$OUT"
START=$SECONDS

part() { echo; echo "=== $1 (at $((SECONDS - START)) s)"; }
verdict() { local rc=$1; [ "$rc" -eq 0 ] && return; [ "$rc" -eq 124 ] && echo "TIMED OUT: $2" || echo "FAILED (exit $rc): $2"; }

part "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi not found"
python -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'devices', torch.cuda.device_count(), 'bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported())"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "no CUDA device visible: stopping"; exit 1; }

part "1. throughput at 121x145x121 (OpenBHB VBM), batch 8 subjects = 16 volumes"
timeout 300 python benchmarks/throughput.py --device cuda --shape 121,145,121 --batch 8 --steps 3 --repeats 3 \
    --modes fp32 bf16+cl fp16+cl --memory-batches 2 4 --memory-gb 24 --loader-epochs 2 --json "$OUT/throughput.json"
verdict $? "throughput"

part "2. contrastive losses at 2N = 8192"
timeout 90 python benchmarks/throughput.py --device cuda --no-steps --losses 8192 --repeats 5 --json "$OUT/losses.json"
verdict $? "losses"

part "3. k-means on 50,000 x 256: faiss GPU vs CPU"
timeout 120 python - <<'EOF'
import time
import numpy as np
try:
    import faiss
except ImportError:
    raise SystemExit("faiss is not installed: skipped (pip install faiss-gpu-cu12 for the GPU path)")
if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
    raise SystemExit(f"faiss {faiss.__version__} has no GPU support here (faiss-cpu wheel): skipped")
x = np.random.default_rng(0).standard_normal((50_000, 256)).astype("float32")
for k in (100, 1000):
    times = {}
    for device, gpu in (("GPU", True), ("CPU", False)):
        kmeans = faiss.Kmeans(256, k, niter=20, seed=0, gpu=gpu, verbose=False)
        started = time.perf_counter()
        kmeans.train(x)
        times[device] = time.perf_counter() - started
        print(f"k = {k:4d}, {device}: {times[device]:6.2f} s, objective {kmeans.obj[-1]:.4g}")
    print(f"k = {k:4d}: GPU {times['CPU'] / times['GPU']:.1f}x faster than CPU")
EOF
verdict $? "faiss k-means"

part "4. one-process NCCL run: medssl pretrain yaware_age --smoke"
timeout 180 python -m torch.distributed.run --standalone --nproc_per_node 1 -m medssl pretrain yaware_age --smoke \
    train.device=cuda eval.after_pretrain=false --out "$WORK/nccl"
verdict $? "NCCL smoke run"

part "5. fp16 + GradScaler: resume bit-exact with the uninterrupted run"
export CUBLAS_WORKSPACE_CONFIG=:4096:8  # deterministic cuBLAS, so a difference is the resume's
run() { timeout 120 python -m medssl pretrain yaware_age --smoke train.device=cuda train.precision=fp16 \
    eval.after_pretrain=false "$@" > "$WORK/last.log" 2>&1 || { tail -5 "$WORK/last.log"; echo "FAILED: pretrain $*"; }; }
run train.epochs=2 --out "$WORK/full"
run train.epochs=2 --out "$WORK/full-again"
run train.epochs=1 --out "$WORK/half"
run train.epochs=2 --out "$WORK/half" --resume
timeout 60 python - "$WORK" <<'EOF'
import sys
from pathlib import Path
import torch
work = Path(sys.argv[1])
def same(a, b):
    sa, sb = (torch.load(work / name / "encoder.pt", weights_only=True) for name in (a, b))
    return sa.keys() == sb.keys() and all(torch.equal(sa[key], sb[key]) for key in sa)
state = torch.load(work / "half" / "checkpoints" / "last.pt", weights_only=True)
print("GradScaler state in the checkpoint:", state.get("scaler", "MISSING"))
print("two uninterrupted runs bit-exact (determinism control):", same("full", "full-again"))
print("resumed run bit-exact with the uninterrupted one:", same("full", "half"))
EOF
verdict $? "fp16 resume check"

part "6. Barlow Twins on bfloat16 embeddings: medssl (bfloat16 products, float32 invariance term) vs lightly's formula"
timeout 60 python benchmarks/losses.py --device cuda --only BarlowTwinsLoss --repeats 11
verdict $? "Barlow Twins losses"

part "7. views in DataLoader workers (loader) vs on the GPU (batch): 40 steps of yaware_age, 96^3, batch 16"
for mode in loader batch; do
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 200 > "$WORK/busy_$mode.txt" 2>/dev/null &
  SAMPLER=$!
  timeout 300 python -m medssl pretrain yaware_age train.device=cuda views.device=$mode data.synthetic.shape=96 \
      data.synthetic.subjects=96 train.steps=40 train.batch_size=16 data.num_workers=4 \
      eval.after_pretrain=false --out "$WORK/views_$mode" > "$WORK/views_$mode.log" 2>&1
  verdict $? "views.device=$mode"
  kill $SAMPLER 2>/dev/null
  python - "$WORK" "$mode" <<'EOF'
import sys
from pathlib import Path
import pandas as pd
work, mode = Path(sys.argv[1]), sys.argv[2]
busy = [float(line) for line in (work / f"busy_{mode}.txt").read_text().split() if line.strip()]
steps = pd.read_csv(work / f"views_{mode}" / "metrics.csv").query("kind == 'step'")
print(f"views.device={mode}: {steps['volumes_per_s'].iloc[5:].median():.1f} volumes/s (median after 5 steps), "
      f"GPU busy {sum(busy) / max(len(busy), 1):.0f} % (nvidia-smi, {len(busy)} samples over the run, cohort generation included)")
EOF
done

part "done in $((SECONDS - START)) s; JSON in $OUT"
