#!/usr/bin/env bash
# GPU check, one command on a CUDA machine: bench/gpu_check.sh [WORKDIR]   (default WORKDIR: runs/gpu_check)
#
#   1. the GPU-marked tests (pytest -m gpu), e.g. the train stage under torchrun with NCCL on every visible GPU;
#   2. one ODMT epoch on MovieLens-1M with DistributedDataParallel on all visible GPUs (train.launcher: torchrun,
#      train.nproc = GPU count, global batch = train.batch_size), after prepare + embed into WORKDIR;
#   3. the retrieval benchmark on GPU (bench/retrieval_speed.py, with --gpu when it has that flag), if present.
#
# It prints each part's figures and a summary, and exits non-zero if a part failed. Environment: PYTHON (default
# .venv/bin/python, set up with `make setup` if missing), GPU_CHECK_EPOCHS (default 1), GPU_CHECK_SET (extra
# `section.key=value` overrides for the ODMT run, space-separated, e.g. "train.batch_size=256 train.precision=bf16").
# Offline: ML-1M and the encoders' weights come from installed packages (README "Data", "Encoders").
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

WORK=${1:-runs/gpu_check}
EPOCHS=${GPU_CHECK_EPOCHS:-1}
EXTRA_SETS=${GPU_CHECK_SET:-}
if [ -z "${PYTHON:-}" ]; then
  [ -x .venv/bin/python ] || make setup || { echo "gpu_check: make setup failed; set PYTHON" >&2; exit 2; }
  PYTHON=.venv/bin/python
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$WORK"
declare -a FAILED=()

section() { printf '\n=== %s ===\n' "$1"; }

GPUS=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)') || GPUS=0
if [ "$GPUS" -lt 1 ]; then
  echo "gpu_check: no CUDA device visible to torch (torch.cuda.is_available() is False); nothing to check" >&2
  exit 2
fi
section "devices"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
"$PYTHON" -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, NCCL {torch.cuda.nccl.version()}, {torch.cuda.device_count()} GPU(s)")'

# --- 1. GPU-marked tests -------------------------------------------------------------------------------------
section "1. GPU-marked tests (pytest -m gpu)"
start=$SECONDS
if "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider; then
  echo "gpu tests: passed in $((SECONDS - start)) s"
else
  rc=$?
  if [ "$rc" -eq 5 ]; then  # pytest: no test collected
    echo "gpu tests: none collected"
  else
    FAILED+=("gpu tests (pytest exit $rc)")
  fi
fi

# --- 2. one ODMT epoch on ML-1M, DDP on every GPU ----------------------------------------------------------------
section "2. ODMT on ML-1M: $EPOCHS epoch(s), DDP on $GPUS GPU(s)"
PARAMS="$WORK/params.yaml"
# shellcheck disable=SC2086  # EXTRA_SETS is a list of words on purpose
"$PYTHON" - "$PARAMS" "$GPUS" "$EPOCHS" $EXTRA_SETS <<'EOF'
import sys
import yaml

out, gpus, epochs, *sets = sys.argv[1:]
raw = yaml.safe_load(open("params.yaml", encoding="utf-8"))
raw["model"]["name"] = "odmt"
raw["model"]["init_from_baseline"] = False  # no baseline run needed: the ID head starts from scratch
raw["embed"]["device"] = "cuda"
raw["train"] |= {"device": "cuda", "epochs": int(epochs), "launcher": "torchrun", "nproc": int(gpus), "num_threads": 0}
for pair in sets:
    key, _, value = pair.partition("=")
    section, _, name = key.partition(".")
    raw[section][name] = yaml.safe_load(value)
with open(out, "w", encoding="utf-8") as f:
    yaml.safe_dump(raw, f, sort_keys=False)
EOF
start=$SECONDS
if "$PYTHON" -m stages.prepare --params "$PARAMS" --out "$WORK/prepared" &&
  "$PYTHON" -m stages.embed --params "$PARAMS" --items "$WORK/prepared/items.parquet" --out "$WORK/features" \
    --cache "$WORK/cache" &&
  "$PYTHON" -m stages.train --params "$PARAMS" --prepared "$WORK/prepared" --features "$WORK/features" \
    --out "$WORK/models" --pretrained "$WORK/models/none.pt" --baseline "$WORK/models/none.pt"; then
  echo "prepare + embed + train: $((SECONDS - start)) s"
  "$PYTHON" - "$WORK/models/train_summary.json" "$GPUS" <<'EOF'
import json
import sys

summary = json.load(open(sys.argv[1], encoding="utf-8"))
print(
    f"ODMT, DDP world size {sys.argv[2]} ({summary['device']} on rank 0): {summary['seconds_per_epoch']:.1f} s/epoch, "
    f"{summary['sequences_per_second']:.0f} sequences/s, valid NDCG@10 {summary['best_valid']['NDCG@10']:.4f} "
    f"(HR@10 {summary['best_valid']['HR@10']:.4f}) after {summary['epochs_run']} epoch(s), "
    f"{summary['num_parameters']:,} parameters, rank-0 peak RSS {summary['peak_rss_mb']:.0f} MiB, "
    f"total {summary['total_seconds']:.0f} s"
)
EOF
else
  FAILED+=("ODMT DDP epoch")
fi

# --- 3. retrieval benchmark on GPU ----------------------------------------------------------------------------------
section "3. retrieval benchmark on GPU"
if [ ! -f bench/retrieval_speed.py ]; then
  echo "bench/retrieval_speed.py not present: skipped"
else
  flags=()
  if "$PYTHON" -m bench.retrieval_speed --help 2>/dev/null | grep -q -- '--gpu'; then
    flags+=(--gpu)
  else
    echo "bench.retrieval_speed has no --gpu flag: running it with its defaults"
  fi
  "$PYTHON" -m bench.retrieval_speed "${flags[@]}" || FAILED+=("retrieval benchmark")
fi

section "summary"
if [ "${#FAILED[@]}" -gt 0 ]; then
  printf 'FAILED: %s\n' "${FAILED[@]}"
  exit 1
fi
echo "all GPU checks passed ($GPUS GPU(s), outputs in $WORK)"
