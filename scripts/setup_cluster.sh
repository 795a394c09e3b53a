#!/usr/bin/env bash
# One command on a cluster's login node, from a checkout on the shared filesystem: the venv every node
# shares (<checkout>/.venv, which the sbatch scripts use) with the cluster's CUDA torch and the pinned
# dependencies, then the FLUX.1-schnell weights (HF_TOKEN), then the three commands to run next.
#
#   HF_TOKEN=hf_… bash scripts/setup_cluster.sh --assets /shared/flux-schnell [--cuda cu126 | --cpu]
#       [--python python3.11] [--skip-fetch]
#
#   --cuda TAG     the PyTorch wheel index for the cluster's CUDA (default cu126: drivers >= 560)
#   --cpu          the CPU wheel instead (tests, CPU-only machines)
#   --skip-fetch   do not download the weights (already there, or no HF_TOKEN yet)
# The project installs with -c "$CONSTRAINTS" when that file exists (default requirements/lock-cpu.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { echo "setup_cluster: $*"; }
die() { echo "setup_cluster: $*" >&2; exit 1; }

assets="" torch_index="https://download.pytorch.org/whl/cu126" python=python3 fetch=1
CONSTRAINTS="${CONSTRAINTS:-requirements/lock-cpu.txt}"
# The lock's torch, as the CUDA build of that wheel index (the lock's other pins then agree with it).
TORCH_SPEC="${TORCH_SPEC:-$(grep -sE '^torch==' "$CONSTRAINTS" || echo 'torch>=2.11,<2.15')}"
while (($#)); do
    case "$1" in
        --assets) assets="$2"; shift 2 ;;
        --cuda) torch_index="https://download.pytorch.org/whl/$2"; shift 2 ;;
        --cpu) torch_index="https://download.pytorch.org/whl/cpu"; shift ;;
        --python) python="$2"; shift 2 ;;
        --skip-fetch) fetch=0; shift ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ -n $assets ]] || die "give --assets DIR (where the FLUX.1-schnell weights go, on the shared filesystem)"
((fetch == 0)) || [[ -n ${HF_TOKEN:-} ]] || die "export HF_TOKEN (a Hugging Face token that accepted FLUX.1-schnell's terms), or --skip-fetch"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$python >= 3.11 needed"

step "venv .venv (shared by every node)"
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
step "torch ($TORCH_SPEC) from $torch_index"
.venv/bin/python -m pip install -q "$TORCH_SPEC" --index-url "$torch_index"
constraints=()
[[ -f $CONSTRAINTS ]] && constraints=(-c "$CONSTRAINTS")
step "the project and its pinned dependencies${constraints:+ (constraints $CONSTRAINTS)}"
# torch is named again so the resolver keeps the build just installed instead of fetching another.
.venv/bin/python -m pip install -q -e . "${constraints[@]}" "$(.venv/bin/python -c 'import torch; print("torch==" + torch.__version__)')"
.venv/bin/python -c 'import torch, torchtitan, zarr; print(f"setup_cluster: torch {torch.__version__}, CUDA build {torch.version.cuda}")'

if ((fetch)); then
    step "weights -> $assets (~10 GB)"
    .venv/bin/python -m downloads fetch --out "$assets"
else
    step "weights: skipped (--skip-fetch); later: HF_TOKEN=… .venv/bin/python -m downloads fetch --out $assets"
fi

cat <<NEXT

Next, from this directory ($(pwd)), with your paths:
  1. sbatch slurm/encode_array.sbatch --input /shared/cc12m --output /shared/flux-cc12m-256 --assets $assets --config configs/encode_cc12m.toml
  2. .venv/bin/python -m shared.inspect_shards /shared/flux-cc12m-256
  3. sbatch slurm/train.sbatch --job.config_file configs/flux_schnell.toml --training.dataset_path /shared/flux-cc12m-256
NEXT
