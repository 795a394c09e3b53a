"""Rerun the suite's mutations: each is one edit of the product that a named test must catch.

    .venv/bin/python scripts/mutations.py [--list] [--fast] [ID ...]

Each mutation is applied to a scratch copy of the committed tree (``git archive HEAD`` into a temporary
folder, this checkout's .venv linked in), its catching tests run there (PYTHONPATH = the copy), and the
copy is thrown away. A mutation is caught when pytest reports failures (exit status 1); it survived when
the tests pass; an error in a fixture (a timeout on a loaded machine) is not a catch. Exit status: 0
when every mutation run was caught, 1 when any survived, 2 when one could not be applied (its text is
no longer in the file: update the table) or pytest could not run its tests.
``--fast`` leaves out those marked slow (each several minutes: a Slurm job or a kill-and-rerun).
Not part of the suite: it reruns tests many times over. tests/README.md lists the claims they guard.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    id: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    slow: bool = False


MUTATIONS = (
    # Issue #26 (claims equal checks, round two)
    Mutation("store-rename-before-fsync", "shared/store.py",
             "        fsync_tree(self.tmp_path)\n        try:\n            os.rename(self.tmp_path, self.final_path)\n",
             "        try:\n            os.rename(self.tmp_path, self.final_path)\n            fsync_tree(self.final_path)\n",
             ("tests/test_crash_consistency.py::test_every_store_is_synced_before_the_rename_that_commits_it_and_its_parent_after",)),
    Mutation("store-parent-not-synced", "shared/store.py",
             "        fsync_dir(self.final_path.parent)\n        return attrs", "        return attrs",
             ("tests/test_crash_consistency.py::test_every_store_is_synced_before_the_rename_that_commits_it_and_its_parent_after",)),
    Mutation("identity-directory-not-synced", "shared/contract.py",
             "            fsync_dir(path.parent)  # the link", "            pass  # the link",
             ("tests/test_crash_consistency.py::test_the_dataset_identity_is_synced_before_its_link_and_the_directory_after",)),
    Mutation("stop-all-reduce-min", "stage2_train/infra/stop_request.py", "op=dist.ReduceOp.MAX", "op=dist.ReduceOp.MIN",
             ("tests/test_stop_request.py",)),
    Mutation("stop-all-reduce-min-slurm", "stage2_train/infra/stop_request.py", "op=dist.ReduceOp.MAX", "op=dist.ReduceOp.MIN",
             ("tests/test_stage2_requeue.py::test_time_limit_signal_checkpoints_requeues_and_matches_uninterrupted_losses",),
             slow=True),
    Mutation("global-batch-branch-local-latents", "stage2_train/trainer.py",
             "global_latents = global_valid_tokens * batch.target.shape[1:].numel()",
             "global_latents = torch.tensor(batch.target.numel(), dtype=torch.float32, device=self.device)",
             ("tests/test_stage2_on_stage1.py::test_one_step_equals_torchtitans_online_step_at_world_size_2",), slow=True),
    Mutation("text-mask-dropped", "stage2_train/model/masked_attention.py",
             "keep = F.pad(self.txt_mask,", "keep = F.pad(torch.ones_like(self.txt_mask),",
             ("tests/test_stage2_compact.py::test_a_caption_of_length_l_attends_to_exactly_l_text_tokens",
              "tests/test_stage2_compact.py::test_a_trimmed_step_equals_the_full_length_masked_step")),
    Mutation("dropout-keeps-the-caption-mask", "stage2_train/step.py",
             "txt_mask = torch.where(drop[:, 0, None], empty_mask, txt_mask)", "txt_mask = txt_mask",
             ("tests/test_stage2_compact.py::test_prompt_dropout_substitutes_the_empty_prompts_mask",)),
    Mutation("lock-pin-deleted", "requirements/lock-cpu.txt", "dill==0.4.1\n", "",
             ("tests/test_lock.py::test_this_venv_holds_the_locked_versions",)),
    Mutation("skip-reasons-swapped", "stage1_encode/prepare.py",
             "        return Skip(raw.key, SkipReason.MISSING_IMAGE)\n    if len(images) > 1:\n"
             "        return Skip(raw.key, SkipReason.SEVERAL_IMAGES)",
             "        return Skip(raw.key, SkipReason.SEVERAL_IMAGES)\n    if len(images) > 1:\n"
             "        return Skip(raw.key, SkipReason.MISSING_IMAGE)",
             ("tests/reliability/test_bad_input.py::test_each_sample_kind_is_skipped_under_its_own_reason",)),
    Mutation("chunk-crc-removed", "shared/store.py",
             'BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"), Crc32cCodec()]',
             'BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")]',
             ("tests/test_stage2_data.py::test_corrupt_sample_stops_training_with_the_store_named",
              "tests/test_stage2_data.py::test_corrupt_samples_are_skipped_when_configured")),
    # Earlier closing notes (#17)
    Mutation("lock-zarr-specifier", "pyproject.toml", '"zarr>=3.1,<4"', '"zarr>=3.2,<4"',
             ("tests/test_lock.py::test_lock_pins_every_pyproject_dependency_within_its_specifier",)),
    Mutation("dropout-columns-swapped", "stage2_train/step.py", "drop[:, 0, None, None]", "drop[:, 1, None, None]",
             ("tests/test_stage2_on_stage1.py::test_one_step_equals_torchtitans_online_step",)),
    Mutation("token-printed", "downloads/hub.py", "    return token\n", "    print(token)\n    return token\n",
             ("tests/reliability/test_zz_logs.py",)),
    Mutation("unsafe-load", "stage2_train/data/ledger.py", "import torch\n", "import torch\n\n\ndef unsafe(path):\n    return torch.load(path)\n",
             ("tests/reliability/test_security.py::test_weights_load_only_through_safe_paths",)),
    Mutation("flops-double-block", "stage2_train/model/flops.py", "(4 + 2 * r)", "(4 + r)", ("tests/test_flops.py",)),
    Mutation("unsafe-names-allowed", "stage1_encode/tars.py",
             'if member.name.startswith("/") or ".." in member.name.split("/"):', "if False:",
             ("tests/reliability/test_bad_input.py::test_every_kind_is_kept_or_skipped_under_its_reason",)),
    # After the merges: a task failing while it starts, a rank killed by a signal
    Mutation("start-failure-leaves-starting", "stage1_encode/progress.py",
             "            if not self._finished:\n", "            if False:\n",
             ("tests/test_second_week.py::test_inspect_says_starting_until_the_encoders_have_loaded",)),
    Mutation("torchrun-kill-unrecorded", "stage2_train/torchrun.py", "if failure.exitcode < 0:", "if failure.exitcode < -99:",
             ("tests/test_stage2_requeue.py::test_a_frozen_and_a_killed_rank_requeue_the_job_which_resumes_with_the_uninterrupted_losses",),
             slow=True),
)


def apply(mutation: Mutation, root: Path) -> bool:
    path = root / mutation.file
    text = path.read_text()
    if text.count(mutation.old) != 1:
        return False
    path.write_text(text.replace(mutation.old, mutation.new))
    return True


def scratch_copy() -> Path:
    """The committed tree in a temporary folder, with this checkout's .venv."""
    root = Path(tempfile.mkdtemp(prefix="mutation-"))
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    (root / ".venv").symlink_to(REPO / ".venv")
    return root


def run(mutation: Mutation) -> str:
    root = scratch_copy()
    try:
        if not apply(mutation, root):
            return "NOT APPLIED (text not found once)"
        env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([str(root / ".venv" / "bin" / "python"), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                               *mutation.tests], cwd=root, env=env, capture_output=True, text=True)
        summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
        if proc.returncode == 1 and " error" in summary:  # a fixture broke (e.g. a timeout), not an assertion
            return f"ERROR (not an assertion): {summary}"
        return {0: "SURVIVED", 1: "caught"}.get(proc.returncode, f"ERROR rc={proc.returncode}") + f": {summary}"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ids", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--fast", action="store_true", help="leave out the slow ones")
    parser.add_argument("--list", action="store_true", help="list the mutations and their tests")
    args = parser.parse_args(argv)
    unknown = set(args.ids) - {m.id for m in MUTATIONS}
    if unknown:
        parser.error(f"no such mutation: {', '.join(sorted(unknown))}")
    chosen = [m for m in MUTATIONS if (not args.ids or m.id in args.ids) and not (args.fast and m.slow)]
    if args.list:
        for m in chosen:
            print(f"{m.id}{' (slow)' if m.slow else ''}: {m.file} -> {', '.join(m.tests)}")
        return 0
    outcomes = []
    for m in chosen:
        started = time.monotonic()
        outcome = run(m)
        outcomes.append(outcome)
        print(f"{m.id}: {outcome} [{time.monotonic() - started:.0f} s]", flush=True)
    if any(o.startswith(("NOT APPLIED", "ERROR")) for o in outcomes):
        return 2
    return 1 if any(o.startswith("SURVIVED") for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
