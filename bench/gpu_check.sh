#!/usr/bin/env bash
# Everything that needs a GPU, in one go (about 8-10 minutes on one H100):
#   1. the CUDA cross-tests (gsplat and diff-gaussian-rasterization against the torch reference);
#   2. bench/iteration.py on CUDA with both CUDA backends at 512^2, its breakdown as CSV;
#   3. the default DAG at 512^2 with the paper's budgets (stage 1 1200, stage 3 1800), timed.
# Run from the repository root on a machine with a CUDA build of torch, gsplat and (optionally) the
# alpha fork of diff-gaussian-rasterization installed in .venv (see docs/running.md: make demo TORCH=torch).
# Results go to $OUT (default: gpu_check/); each step's log beside its figures.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
SNAKEMAKE=${SNAKEMAKE:-.venv/bin/snakemake}
status=0

echo "== device"
"$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/device.txt" || exit 1

echo "== 1. CUDA cross-tests"
"$PY" -m pytest -q -p no:cacheprovider tests/test_cuda_backends.py 2>&1 | tee "$OUT/cuda_tests.log" || status=1

echo "== 2. iteration breakdown on CUDA"
"$PY" bench/iteration.py --device cuda --backends gsplat inria --sizes 512 --threads 8 --iterations 100 \
    --csv "$OUT/iteration_cuda.csv" 2>&1 | tee "$OUT/iteration_cuda.log" || status=1

echo "== 3. the default DAG at 512^2 with the paper's budgets"
work="$OUT/dag512"
mkdir -p "$work"
"$PY" - "$work/config.yaml" <<'EOF'
import sys, yaml
config = yaml.safe_load(open("config.yaml"))
subject = next(iter(config["subjects"]))
config["subjects"][subject]["synthetic"].update(width=512, height=512)
config.setdefault("optimize", {})["iterations"] = 1200
config.setdefault("refine", {})["iterations"] = 1800
config["device"] = "cuda"
yaml.safe_dump(config, open(sys.argv[1], "w"), sort_keys=False)
EOF
start=$(date +%s)
"$SNAKEMAKE" --snakefile Snakefile --directory "$work" --configfile "$work/config.yaml" --cores all \
    --resources gpu=1 > "$OUT/dag512.log" 2>&1 || status=1
echo "DAG at 512^2, paper budgets: $(( $(date +%s) - start )) s" | tee "$OUT/dag512_time.txt"
cp "$work/results/summary.csv" "$OUT/summary512.csv" 2>/dev/null || true
"$PY" bench/stage_costs.py "$work/results/benchmarks" | tee "$OUT/dag512_stage_costs.txt" || true
exit $status
