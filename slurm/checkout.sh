# Sourced by the sbatch scripts: $project (the checkout) and $python (its venv's), or one line and exit 1.
# Slurm runs a copy of the script, so the scripts find this file, and with it the checkout, through the
# path they were submitted as (scontrol's Command); FLUX_PROJECT_DIR names another checkout. Relative
# paths in the arguments stay relative to the directory sbatch ran in.
project="${FLUX_PROJECT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
python="$project/.venv/bin/python"
if [[ ! -x $python ]]; then
    echo "$SLURM_JOB_NAME: no $python: run scripts/setup_cluster.sh in the checkout, or export" \
         "FLUX_PROJECT_DIR=/path/to/checkout before sbatch" >&2
    exit 1
fi
export PYTHONPATH="$project${PYTHONPATH:+:$PYTHONPATH}"
