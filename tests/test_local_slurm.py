"""Round trips through the real local Slurm cluster (scripts/local_slurm.sh): the behaviours the
project's sbatch scripts rely on, checked as they really are on Slurm 22.05 with emulated nodes."""

import textwrap
import time

import pytest


def write_script(path, body: str):
    path.write_text("#!/bin/bash\n" + textwrap.dedent(body).lstrip())
    return path


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def running(pid: int) -> bool:
    """Alive and not a zombie (a container's PID 1 may reap orphans late)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_array_job_runs_every_task(slurm_cluster, tmp_path):
    # Stage 1's shape: task i takes shards i, i+N, ... with N = SLURM_ARRAY_TASK_COUNT.
    script = write_script(tmp_path / "array.sh", f"""
        #SBATCH --array=0-2
        #SBATCH --gres=gpu:1
        #SBATCH --output={tmp_path}/array-%A_%a.out
        touch "{tmp_path}/task-$SLURM_ARRAY_TASK_ID-of-$SLURM_ARRAY_TASK_COUNT"
        echo "task $SLURM_ARRAY_TASK_ID on $SLURMD_NODENAME"
    """)
    job = slurm_cluster.submit(script, timeout=60)
    assert (job.returncode, job.state) == (0, "COMPLETED"), job.logs()
    assert sorted(p.name for p in tmp_path.glob("task-*")) == [f"task-{i}-of-3" for i in range(3)]
    # Log paths come from the script's own --output pattern, expanded per task.
    assert job.log_path(task=1) == tmp_path / f"array-{job.job_id}_1.out"
    assert job.log(task=1).startswith("task 1 on n")


RDZV = """
import os, socket, time
# What torchrun's c10d rendezvous needs: rank 0 listens on the job's first node, by name,
# and every other rank connects to it from its own node.
head, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
node, rank = os.environ["SLURMD_NODENAME"], int(os.environ["SLURM_PROCID"])
if rank == 0:
    with socket.create_server((head, port)) as srv:
        srv.settimeout(30)
        conn, _ = srv.accept()
        print(f"rank0 on {node} heard: {conn.recv(100).decode()}", flush=True)
else:
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection((head, port), timeout=5) as conn:
                conn.sendall(f"rank{rank} on {node}".encode())
                break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
"""


def test_two_node_job_and_rendezvous(slurm_cluster, tmp_path):
    (tmp_path / "rdzv.py").write_text(RDZV)
    # The production multi-node header, unmodified (8 fake GPUs per node).
    script = write_script(tmp_path / "two_nodes.sh", f"""
        #SBATCH --nodes=2
        #SBATCH --ntasks-per-node=1
        #SBATCH --gpus-per-node=8
        #SBATCH --output={tmp_path}/%j.out
        set -euo pipefail
        echo "nodelist=$SLURM_JOB_NODELIST gpus_on_node=$SLURM_GPUS_ON_NODE"
        export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -1)
        export MASTER_PORT=$(python -c 'import socket; s=socket.socket(); s.bind(("",0)); print(s.getsockname()[1])')
        echo "master=$MASTER_ADDR"
        srun bash -c 'echo "step on $SLURMD_NODENAME procid=$SLURM_PROCID"'
        srun python {tmp_path}/rdzv.py
    """)
    job = slurm_cluster.submit(script, timeout=60)
    log = job.log()
    assert job.returncode == 0, job.logs()
    assert "nodelist=n[1-2] gpus_on_node=8" in log
    assert "master=n1" in log
    assert "step on n1 procid=0" in log and "step on n2 procid=1" in log
    assert "rank0 on n1 heard: rank1 on n2" in log


def test_failing_job_exit_code_via_sbatch_wait(slurm_cluster, tmp_path):
    script = write_script(tmp_path / "fail.sh", f"""
        #SBATCH --output={tmp_path}/fail-%j.out
        echo "about to fail"
        exit 7
    """)
    job = slurm_cluster.submit(script, wait="sbatch", timeout=60)
    assert job.returncode == 7 and job.state == "FAILED", job.logs()
    # An array returns its highest task exit code: a driver sees one failed task.
    array = write_script(tmp_path / "fail_array.sh", f"""
        #SBATCH --array=0-2
        #SBATCH --output={tmp_path}/fail-%A_%a.out
        [ "$SLURM_ARRAY_TASK_ID" = 1 ] && exit 3
        exit 0
    """)
    job = slurm_cluster.submit(array, wait="sbatch", timeout=60)
    assert job.returncode == 3 and job.state == "FAILED", job.logs()
    # The polling wait reports the same.
    assert slurm_cluster.wait(job.job_id).returncode == 3


@pytest.mark.slurm_22_05
def test_cuda_visible_devices_inside_jobs(slurm_cluster, tmp_path):
    """Documents real behaviour: with the fake (plain-file) GPUs, Slurm 22.05.8 *unsets*
    CUDA_VISIBLE_DEVICES in the batch script and in srun steps, whether or not GPUs were requested
    and even when the submitter had it set. (slurmd logs "gpuN is not a valid character or block
    device", so it has no device index to export.) Code under test must read "unset or empty" as
    "no CUDA" and fall back to CPU/gloo; on a real GPU node Slurm sets it to the allocated indices."""
    script = write_script(tmp_path / "cvd.sh", f"""
        #SBATCH --output={tmp_path}/cvd-%j.out
        echo "batch=${{CUDA_VISIBLE_DEVICES-unset}}"
        srun bash -c 'echo "step=${{CUDA_VISIBLE_DEVICES-unset}}"'
    """)
    for opts in (["--gres=gpu:1"], ["--gpus-per-node=8"], []):
        job = slurm_cluster.submit(script, sbatch_opts=opts, env_extra={"CUDA_VISIBLE_DEVICES": "3"},
                                   timeout=60)
        assert job.returncode == 0, job.logs()
        assert job.log().split() == ["batch=unset", "step=unset"], (opts, job.logs())


@pytest.mark.slurm_22_05
def test_requeue_runs_the_job_again(slurm_cluster, tmp_path):
    # A preempted/requeued Stage 1 task must restart and resume: same job id, append to its log.
    script = write_script(tmp_path / "requeue.sh", f"""
        #SBATCH --requeue
        #SBATCH --open-mode=append
        #SBATCH --output={tmp_path}/requeue-%j.out
        echo "run restart=${{SLURM_RESTART_COUNT:-0}}"
        [ "${{SLURM_RESTART_COUNT:-0}}" = 0 ] && exec sleep 300
        exit 0
    """)
    job = slurm_cluster.submit(script, wait=False)
    assert slurm_cluster.wait_running(job.job_id).records[0]["JobState"] == "RUNNING"
    slurm_cluster.requeue_now(job.job_id)
    done = slurm_cluster.wait(job.job_id, timeout=60)
    assert (done.returncode, done.state) == (0, "COMPLETED"), (done.records, done.logs())
    assert done.records[0]["Restarts"] == "1"
    # (slurmstepd's "CANCELLED ... DUE TO JOB REQUEUE" line may land before or after run 0's.)
    runs = [line for line in done.log().splitlines() if line.startswith("run ")]
    assert runs == ["run restart=0", "run restart=1"], done.logs()


def test_scancel_kills_the_job_processes(slurm_cluster, tmp_path):
    script = write_script(tmp_path / "cancel.sh", f"""
        #SBATCH --output={tmp_path}/cancel-%j.out
        sleep 300 &
        echo $! > {tmp_path}/child.pid
        wait
    """)
    job = slurm_cluster.submit(script, wait=False)
    pid_file = tmp_path / "child.pid"
    assert wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 30), \
        slurm_cluster.wait(job.job_id, timeout=5).logs()
    child = int(pid_file.read_text())
    slurm_cluster.scancel(job.job_id)
    done = slurm_cluster.wait(job.job_id, timeout=30)
    assert done.state == "CANCELLED" and done.returncode != 0
    # KillWait=2: the job's processes are gone within seconds.
    assert wait_for(lambda: not running(child), 15), f"job child {child} alive after scancel"
