"""Drive the local Slurm cluster of scripts/local_slurm.sh from tests.

`SlurmCluster.submit` runs real `sbatch`; waiting polls `scontrol show job` every 0.5 s because
`sbatch --wait` polls with back-off (2 s, 8 s, 32 s: a 3 s job can take ~10 s to return).
Job records (state, exit code, expanded log paths) come from scontrol; they live MinJobAge=60 s
after a job ends (no accounting database, so no sacct).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# Final job states; anything else (PENDING, RUNNING, COMPLETING, REQUEUED, ...) means "not yet".
TERMINAL_STATES = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
    "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
}

# `scontrol -o show job` prints "Key=Value Key=Value ..."; values may hold spaces (JobName, paths).
_KEY = re.compile(r"(?:^| )([A-Za-z][\w:/]*)=")


def parse_record(line: str) -> dict[str, str]:
    keys = list(_KEY.finditer(line))
    return {
        m.group(1): line[m.end(): keys[i + 1].start() if i + 1 < len(keys) else len(line)].strip()
        for i, m in enumerate(keys)
    }


def record_returncode(rec: dict[str, str]) -> int:
    """Shell convention: the exit status, or 128+signal; a failed state never reads as 0."""
    code, _, sig = rec.get("ExitCode", "0:0").partition(":")
    rc = 128 + int(sig) if int(sig or 0) else int(code)
    if rc == 0 and rec.get("JobState") not in ("COMPLETED", None):
        rc = 1
    return rc


@dataclass
class JobResult:
    job_id: str
    returncode: int | None = None     # None until the job has ended; an array's highest
    state: str | None = None          # e.g. COMPLETED, FAILED, CANCELLED (an array's worst)
    records: list[dict[str, str]] = field(default_factory=list)  # one per (array) task

    def _by_task(self) -> dict[str | None, dict[str, str]]:
        return {r.get("ArrayTaskId"): r for r in self.records}

    def log_path(self, task: int | None = None, stream: str = "StdOut") -> Path:
        """Expanded path of the job's (or array task's) output file, as Slurm reports it."""
        by_task = self._by_task()
        rec = by_task[str(task)] if task is not None else next(iter(by_task.values()))
        return Path(rec[stream])

    def log(self, task: int | None = None, stream: str = "StdOut") -> str:
        path = self.log_path(task, stream)
        return path.read_text() if path.exists() else ""

    def logs(self) -> str:
        """Every task's stdout, for assertion messages."""
        parts = []
        for r in self.records:
            path = Path(r.get("StdOut", ""))
            text = path.read_text() if path.is_file() else "(no file)"
            parts.append(f"--- job {r['JobId']} {r.get('JobState')}: {path}\n{text}")
        return "\n".join(parts)


class SlurmCluster:
    """One local cluster (controller + nodes n1, n2 with 8 fake GPUs each) in `state_dir`."""

    def __init__(self, state_dir: Path, repo_root: Path):
        self.state_dir = Path(state_dir)
        self.repo_root = Path(repo_root)
        self.script = self.repo_root / "scripts" / "local_slurm.sh"
        self.conf = self.state_dir / "etc" / "slurm.conf"
        env = {k: v for k, v in os.environ.items()
               # A pytest run inside a real Slurm job must not leak that job's settings into ours.
               if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
        env["SLURM_CONF"] = str(self.conf)
        # Jobs inherit this environment (sbatch --export=ALL): they find the venv's python first.
        env["PATH"] = f"{Path(sys.prefix) / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        # 2 CPU cores shared by many processes: one thread each, or they oversubscribe badly.
        env["OMP_NUM_THREADS"] = "1"
        self.env = env

    @property
    def node_tmp(self) -> Path:
        """A node-local directory: on n2 (its own mount namespace) a private tmpfs, on n1 the real one."""
        return self.state_dir.resolve() / "node-tmp"

    def seen_on_n2(self, path: Path) -> bool:
        """Whether ``path`` exists as n2's processes see it (through its slurmd's mount namespace)."""
        pid = (self.state_dir / "pids" / "slurmd-n2.pid").read_text().strip()
        return Path(f"/proc/{pid}/root{path}").exists()

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._script("start")

    def stop(self) -> None:
        self._script("stop")

    def _script(self, action: str) -> None:
        proc = subprocess.run(["bash", str(self.script), action, str(self.state_dir)],
                              capture_output=True, text=True, timeout=180)
        if proc.returncode != 0:
            raise RuntimeError(f"local_slurm.sh {action} failed:\n{proc.stdout}{proc.stderr}")

    # --- commands --------------------------------------------------------------------------------
    def run(self, *cmd: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        """Run a Slurm client command (sinfo, squeue, scontrol, srun, ...) against this cluster."""
        proc = subprocess.run(list(cmd), env=kw.pop("env", self.env), capture_output=True, text=True,
                              timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc

    def version(self) -> str:
        """The Slurm release these daemons and clients are, e.g. "22.05.8" (``sinfo --version``)."""
        return self.run("sinfo", "--version").stdout.split()[-1]

    def scontrol(self, *args: str, check: bool = True) -> str:
        return self.run("scontrol", *args, check=check).stdout

    def submit(self, script_path, *args, sbatch_opts=(), env_extra=None, cwd=None,
               wait: bool | str = True, timeout: float = 120) -> JobResult:
        """sbatch `script_path args...`; options on the command line override the script's #SBATCH.

        wait=True: poll until the job (all array tasks) ended, fill returncode/state/records.
        wait="sbatch": use the real `sbatch --wait` (returncode is sbatch's own exit status).
        wait=False: return at once with the job id; call .wait(job_id) later.
        """
        env = {**self.env, **(env_extra or {})}
        cmd = ["sbatch", "--parsable", *sbatch_opts]
        if wait == "sbatch":
            cmd.append("--wait")
        cmd += [str(script_path), *map(str, args)]
        proc = self.run(*cmd, env=env, cwd=cwd or self.repo_root, check=False, timeout=timeout)
        # --parsable prints "jobid[;cluster]"; with --wait other lines may follow.
        first = proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else ""
        job_id = first.split(";")[0]
        if not job_id.isdigit():
            raise RuntimeError(f"sbatch failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        if wait == "sbatch":
            result = self.wait(job_id, timeout=30)
            result.returncode = proc.returncode
            return result
        return self.wait(job_id, timeout=timeout) if wait else JobResult(job_id)

    def records(self, job_id) -> list[dict[str, str]]:
        """One record per job (or per array task) from `scontrol show job`; [] once purged."""
        proc = self.run("scontrol", "-o", "show", "job", str(job_id), check=False)
        return [parse_record(line) for line in proc.stdout.splitlines() if line.startswith("JobId=")]

    def job_state(self, job_id) -> str:
        """PENDING/RUNNING/... while any (array) task is unfinished; then COMPLETED or the worst end."""
        states = [r["JobState"] for r in self.records(job_id)]
        if not states:
            raise KeyError(f"job {job_id} unknown (never existed, or purged after MinJobAge)")
        live = [s for s in states if s not in TERMINAL_STATES]
        if live:
            return "RUNNING" if "RUNNING" in live else live[0]
        bad = [s for s in states if s != "COMPLETED"]
        return bad[0] if bad else "COMPLETED"

    def wait(self, job_id, timeout: float = 120, until=TERMINAL_STATES) -> JobResult:
        """Poll every 0.5 s until every record's state is in `until` (default: ended).

        On timeout the job is cancelled (no strays) and TimeoutError carries its logs."""
        deadline = time.monotonic() + timeout
        while True:
            recs = self.records(job_id)
            if recs and all(r["JobState"] in until for r in recs):
                break
            if time.monotonic() > deadline:
                result = JobResult(str(job_id), records=recs)
                self.scancel(job_id)
                raise TimeoutError(f"job {job_id} not in {sorted(until)} after {timeout}s: "
                                   f"{[r.get('JobState') for r in recs]}\n{result.logs()}")
            time.sleep(0.5)
        result = JobResult(str(job_id), records=recs)
        if all(r["JobState"] in TERMINAL_STATES for r in recs):
            result.returncode = max(record_returncode(r) for r in recs)
            result.state = self.job_state(job_id)
        return result

    def wait_running(self, job_id, timeout: float = 60) -> JobResult:
        return self.wait(job_id, timeout, until={"RUNNING"} | TERMINAL_STATES)

    def scancel(self, job_id, *opts: str) -> None:
        self.run("scancel", *opts, str(job_id), check=False)

    def requeue_now(self, job_id, timeout: float = 60) -> None:
        """Requeue a job (unless it already went back to PENDING, e.g. requeued by itself) and let
        it start again at once: Slurm otherwise holds a requeued job ~120 s (BeginTime)."""
        if any(r["JobState"] != "PENDING" for r in self.records(job_id)):
            self.scontrol("requeue", str(job_id))
        # StartTime can only be updated once the job is PENDING again (not while COMPLETING).
        self.wait(job_id, timeout, until={"PENDING"})
        # slurmd revoked the killed run's credential at a whole second T and refuses any launch whose
        # credential is from second <= T ("Job credential revoked": the job then FAILS without
        # running). The kill came before PENDING, so launching in the next second is safe.
        time.sleep(1.05 - time.time() % 1)
        self.scontrol("update", f"JobId={job_id}", "StartTime=now")
