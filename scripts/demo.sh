#!/usr/bin/env bash
# The demo: the whole product on one machine, through the real Slurm path, with tiny models.
#
#   bash scripts/demo.sh [WORK_DIR]        (default: ./demo_run; a rerun reuses the assets, tars and
#                                           dataset, and keeps its logs and training run apart by run id)
#
# 1. setup (venv, Slurm) and a local 2-node Slurm cluster with fake GPUs
# 2. tiny FLUX.1-schnell-layout assets (real formats, random weights) and CC12M-style tars
# 3. sbatch slurm/encode_array.sbatch  (2 array tasks over 4 tars)  -> DATASET
# 4. python -m shared.inspect_shards DATASET --verify --show 2 --grid
# 5. sbatch slurm/train.sbatch          (2 nodes, HSDP replicate 2, 10 steps) on DATASET
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=$(mkdir -p "${1:-demo_run}" && cd "${1:-demo_run}" && pwd)
run_id=$(date -u +%Y%m%d-%H%M%S)
logs="$work/logs/$run_id"   # a fresh cluster numbers jobs from 1 again: one log directory per run
py=.venv/bin/python
started=$SECONDS

step() { printf '\n== %s\n' "$*"; }

step "setup"
bash scripts/setup.sh

step "local Slurm cluster (controller + nodes n1, n2)"
cluster="$work/slurm"
# The production encode header asks --cpus-per-task=12: declare 16 per node so it runs unmodified.
LOCAL_SLURM_CPUS=16 bash scripts/local_slurm.sh start "$cluster" >/dev/null
trap 'bash scripts/local_slurm.sh stop "$cluster" >/dev/null 2>&1 || true' EXIT
export SLURM_CONF="$cluster/etc/slurm.conf" OMP_NUM_THREADS=1 PATH="$repo/.venv/bin:$PATH"
sinfo --Node --format='%N %T %G' | sed 's/^/  /'

step "tiny assets and 4 CC12M-style tars"
[[ -d $work/assets ]] || $py -m fixtures tiny --out "$work/assets"
[[ -d $work/tars ]] || $py -m fixtures sample-data --out "$work/tars" --shards 4 --per-shard 12

# Waits for a job and fails the demo with its logs if it did not complete.
await() {
    local job=$1 state
    while :; do
        state=$(scontrol show job "$job" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | sort -u | cut -d= -f2 | tr '\n' ' ')
        [[ -z $state || $state =~ (PENDING|RUNNING|CONFIGURING|COMPLETING|REQUEUED) ]] || break
        sleep 1
    done
    if [[ $state != "COMPLETED " ]]; then
        echo "demo: job $job ended $state" >&2
        tail -n 40 "$logs"/*"_$job"* >&2 || true
        exit 1
    fi
}

mkdir -p "$logs"
step "Stage 1: sbatch slurm/encode_array.sbatch (array of 2 tasks)"
job=$(sbatch --parsable --array=0-1 --output="$logs/%x_%A_%a.out" slurm/encode_array.sbatch \
    --input "$work/tars" --output "$work/dataset" --assets "$work/assets" --config configs/encode_tiny.toml)
echo "  submitted array job $job"
await "$job"
tail -n 3 "$logs"/flux-encode_"$job"_*.out | sed 's/^/  /'

step "inspect: python -m shared.inspect_shards DATASET --verify --show 2 --grid"
$py -m shared.inspect_shards "$work/dataset" --verify --show 2 --grid "$work/grid.png"
echo "  note: grid.png is decoded by the tiny AE's random weights, so it shows noise, not pictures"

step "Stage 2: sbatch slurm/train.sbatch (2 nodes, HSDP replicate 2 x shard 1, 10 steps)"
train="$work/train/$run_id"
job=$(sbatch --parsable --output="$logs/%x_%j.out" slurm/train.sbatch --job.config_file configs/flux_tiny.toml \
    --training.dataset_path "$work/dataset" --job.dump_folder "$train" --training.steps 10 \
    --checkpoint.enable --checkpoint.interval 5)
echo "  submitted job $job"
await "$job"
grep -E "step: *[0-9]+ " "$logs/flux-train_$job.out" | sed 's/^/  /'
last=$(grep -E "step: *[0-9]+ " "$logs/flux-train_$job.out" | tail -n 1)

bash scripts/local_slurm.sh stop "$cluster" >/dev/null 2>&1
trap - EXIT
step "done in $((SECONDS - started)) s (run $run_id); the local Slurm cluster was stopped"
echo "  trained      $(sed -E 's/.*step: *([0-9]+) +loss: *([^ ]+).*/\1 steps, final loss \2/' <<<"$last")"
echo "  dataset      $work/dataset"
echo "  image grid   $work/grid.png (random weights: noise)"
echo "  checkpoints  $train/checkpoint"
echo "  logs         $logs/"
