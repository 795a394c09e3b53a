"""A damaged source tar through the real ``slurm/encode_array.sbatch``: the task names the tar and where
it was cut and fails (exit 3); ``inspect_shards`` puts it in its headline; once the tar is replaced by
a whole copy, the rerun encodes that store again. The progress lines carry an ETA from the first batch."""

import re
from pathlib import Path

from test_stage1_pipeline import TINY_CONFIG

from fixtures import write_sample_tars
from shared import contract
from shared.inspect_shards import main as inspect_main

pytest_plugins = ["fixtures_assets"]

REPO = Path(__file__).resolve().parents[1]
PER_TAR = 8


def encode(cluster, assets: Path, tars: Path, dataset: Path, logs: Path):
    logs.mkdir()
    return cluster.submit(
        REPO / "slurm" / "encode_array.sbatch",
        "--input", tars, "--output", dataset, "--assets", assets, "--config", TINY_CONFIG,
        "--run.progress_interval_s", "0.01",
        sbatch_opts=["--array=0-0", f"--output={logs}/%x_%A_%a.out", "--cpus-per-task=1"],
        timeout=300,
    )


def headline(dataset: Path, capsys) -> str:
    capsys.readouterr()
    assert inspect_main([str(dataset)]) == 0
    return capsys.readouterr().out.splitlines()[0]


def test_damaged_tar_is_named_then_replaced_and_encoded_again(slurm_cluster, tiny_assets, tmp_path, capsys):
    whole, cut = write_sample_tars(tmp_path / "tars", shards=2, per_shard=PER_TAR)
    good_bytes = cut.read_bytes()
    cut_at = good_bytes.index(b"000000012.jpg") + 700  # inside the 5th sample's image
    cut.write_bytes(good_bytes[:cut_at])
    dataset = tmp_path / "ds"

    first = encode(slurm_cluster, tiny_assets, tmp_path / "tars", dataset, tmp_path / "run1")
    log = first.log(task=0)
    assert (first.returncode, first.state) == (3, "FAILED"), first.logs()
    assert f"damaged source: {cut.name} cut at byte {cut_at:,} after 4 samples" in log, log
    assert "1 damaged source(s), named above; exit status 3" in first.logs()
    cut_store = contract.shards_dir(dataset) / contract.store_name(cut)
    short = contract.read_store_attrs(cut_store)
    assert short.truncated_at_byte == cut_at and short.skipped.get("truncated_tar") == 1
    assert contract.read_store_attrs(contract.shards_dir(dataset) / contract.store_name(whole)).truncated_at_byte is None

    # ETA: "?" only before the first batch, a duration on every progress line after it
    lines = [line for line in log.splitlines() if "samples (" in line and ", ETA " in line]
    etas = [(int(line.split("] ", 1)[1].split(" samples", 1)[0].replace(",", "")), line.rsplit("ETA ", 1)[1]) for line in lines]
    assert any(samples > 0 for samples, _ in etas), log
    assert all(re.fullmatch(r"\d+:\d\d:\d\d", eta) for samples, eta in etas if samples > 0), log

    top = headline(dataset, capsys)
    expected_unread = PER_TAR - short.samples_read
    assert top.startswith(
        f"COMPLETE with 1 damaged source: {cut.name} cut at byte {cut_at:,}, ~{expected_unread} samples unread · 2/2 stores"
    ), top

    cut.write_bytes(good_bytes)  # the user copies the tar again
    second = encode(slurm_cluster, tiny_assets, tmp_path / "tars", dataset, tmp_path / "run2")
    assert (second.returncode, second.state) == (0, "COMPLETED"), second.logs()
    log = second.log(task=0)
    assert f"{cut_store.name}: its source tar changed since the store was made; encoding it again" in log, log
    assert "done: 1 stores committed, 1 already there," in log, log
    fixed = contract.read_store_attrs(cut_store)
    assert fixed.truncated_at_byte is None and fixed.samples_read == PER_TAR
    assert fixed.num_samples > short.num_samples
    assert not contract.temporary_store_paths(dataset)
    top = headline(dataset, capsys)
    assert top.startswith("COMPLETE: 2/2 stores"), top
