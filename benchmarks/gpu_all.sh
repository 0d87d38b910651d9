#!/usr/bin/env bash
# The GPU benchmarks in one go, about 4-5 minutes on one H100 (data pipeline, then training and
# inference: reference vs fast path at batch 16/64, BoostLU cost, end to end from JPEGs and from
# the uint8 cache, torch.compile default / reduce-overhead at batch 16).
#
#     bash benchmarks/gpu_all.sh          # from anywhere; pamc need not be installed
#
# Needs torch, torchvision, numpy, PIL, safetensors, tqdm, yaml, sklearn (pamc's dependencies).
# Writes the markdown report to $OUT/gpu_bench.md ($OUT if set, else ./bench-results) and the
# commands' stderr to gpu_bench.log beside it.  Each benchmark runs under a time limit, and
# prints its rows as it measures them, so a slow compile cannot take the other results with it.
set -u -o pipefail
cd "$(dirname "$0")/.."
dest="${OUT:-./bench-results}"
mkdir -p "$dest"
report="$dest/gpu_bench.md"
log="$dest/gpu_bench.log"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python="${PYTHON:-$(command -v python3 || command -v python)}"
: > "$log"

bench() {  # bench SECONDS SCRIPT ARGS...: run one benchmark under a time limit, report how it ended
    local limit=$1
    shift
    printf '\n`python %s`\n' "$*"
    timeout "$limit" "$python" "$@" 2>>"$log"
    local status=$?
    if [ "$status" -eq 124 ]; then
        printf '\n(stopped after %s s: the rows above are complete, later ones are missing)\n' "$limit"
    elif [ "$status" -ne 0 ]; then
        printf '\n(failed with status %s; see %s)\n' "$status" "$log"
    fi
}

{
    printf '# pamc GPU benchmarks, %s\n\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "(no nvidia-smi)"
    "$python" -c 'import torch, torchvision; print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, CUDA available: {torch.cuda.is_available()}")'
    bench 70 benchmarks/bench_data.py --device cuda --images 1024
    bench 230 benchmarks/bench_train.py --device cuda --e2e --images 2048 --compile default:16,reduce-overhead:16
} 2>&1 | tee "$report"
