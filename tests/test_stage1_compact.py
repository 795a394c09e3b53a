"""Compact text (issue #30) on Stage 1's side: the stores a compact run writes, refusals across modes,
``--verify`` of the padding, and ``inspect_shards --tokens`` in both modes (tiny assets, CPU, real code)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from fixtures import write_sample_tars
from shared import contract, tokens
from shared.contract import ContractError
from shared.inspect_shards import main as inspect_main
from shared.inspection.verify import check_store
from shared.store import verify_store
from stage1_encode.config import ConfigError, load_config
from stage1_encode.errors import Stage1Error
from stage1_encode.pipeline import Task, run_task
from stage1_encode.prompts import encode_prompt_set
from stage2_train.validation.prompt_set import load_prompt_set

pytest_plugins = ["fixtures_assets"]

TINY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "encode_tiny.toml"
COMPACT = [("text.mode", "compact")]
MAX_LENGTH = 96
"""Below the fixture corpus's long captions, so some are truncated."""


def encode(tars: Path, output: Path, assets: Path, overrides=(), text_from: Path | None = None):
    config = load_config(TINY_CONFIG, [("workers.decode", "0"), ("text.t5_max_length", str(MAX_LENGTH)), *overrides])
    return run_task(config, Task(str(tars), output, assets, text_from=text_from), out=io.StringIO())


@pytest.fixture(scope="module")
def datasets(tiny_assets, tmp_path_factory) -> dict[str, Path]:
    """The same two tars encoded exact and compact."""
    root = tmp_path_factory.mktemp("compact")
    write_sample_tars(root / "tars", shards=2, per_shard=10)
    encode(root / "tars", root / "exact", tiny_assets)
    encode(root / "tars", root / "compact", tiny_assets, COMPACT)
    return {"tars": root / "tars", "exact": root / "exact", "compact": root / "compact"}


def stored(store: Path, name: str) -> np.ndarray:
    return zarr.open_group(store, mode="r")[name][:]


def expected_lengths(assets: Path, captions: list[str]) -> list[int]:
    """Real tokens per caption, counted here from the tokenizer's own attention mask."""
    hf = tokens.load_t5_tokenizer(assets, MAX_LENGTH).hf_tokenizer
    mask = hf(captions, truncation=True, max_length=MAX_LENGTH, padding="max_length")["attention_mask"]
    return [sum(row) for row in mask]


def test_text_mode_is_exact_by_default_and_checked():
    assert load_config(TINY_CONFIG).text.mode == "exact" and load_config(TINY_CONFIG, COMPACT).text.compact
    with pytest.raises(ConfigError, match="text.mode must be one of exact, compact; got 'short'"):
        load_config(TINY_CONFIG, [("text.mode", "short")])


def test_a_compact_run_stores_t5_length_and_zero_padding_rows(datasets, tiny_assets):
    exact, compact = contract.read_identity(datasets["exact"]), contract.read_identity(datasets["compact"])
    assert compact.text_mode == contract.COMPACT_TEXT and compact.compact_text
    assert "text_mode" not in json.loads((datasets["exact"] / contract.DATASET_FILE).read_text())["identity"]
    assert exact.differences(compact) == ["text_mode: None != 'compact'"]
    lengths_seen = []
    for store in contract.committed_store_paths(datasets["compact"]):
        assert verify_store(store, compact, contract.array_specs(compact)) == []
        lengths, t5 = stored(store, contract.T5_LENGTH), stored(store, contract.T5)
        assert lengths.dtype == np.int32
        assert lengths.tolist() == expected_lengths(tiny_assets, [str(c) for c in stored(store, contract.CAPTION)])
        for row, n in zip(t5, lengths):
            assert np.abs(row[:n]).max(axis=1).all()  # every real row written
            assert not row[n:].any()
        lengths_seen += lengths.tolist()
    assert max(lengths_seen) == MAX_LENGTH and min(lengths_seen) < MAX_LENGTH // 4  # a truncated caption and short ones
    empty = datasets["compact"] / contract.EMPTY_PROMPT_STORE
    assert stored(empty, contract.T5_LENGTH).tolist() == [1]  # "" is EOS alone
    assert not stored(empty, contract.T5)[0, 1:].any()


def test_compact_t5_takes_far_fewer_bytes_than_exact_on_the_same_tars(datasets):
    def t5_bytes(dataset: Path) -> int:
        files = (f for s in contract.committed_store_paths(dataset) for f in (s / contract.T5).rglob("*"))
        return sum(f.stat().st_size for f in files if f.is_file())

    exact, compact = t5_bytes(datasets["exact"]), t5_bytes(datasets["compact"])
    lengths = np.concatenate([stored(s, contract.T5_LENGTH) for s in contract.committed_store_paths(datasets["compact"])])
    assert compact < exact * (lengths.mean() / MAX_LENGTH + 0.1), (compact, exact, lengths.mean())


def test_modes_never_mix_in_one_dataset_each_refusal_one_line(datasets, tiny_assets, tmp_path):
    for dataset, overrides in ((datasets["compact"], ()), (datasets["exact"], COMPACT)):
        before = sorted(p.relative_to(dataset) for p in dataset.rglob("*"))
        with pytest.raises(Stage1Error, match="encoded with another identity") as exc:
            encode(datasets["tars"], dataset, tiny_assets, overrides)
        assert "text_mode" in str(exc.value) and "\n" not in str(exc.value)
        assert sorted(p.relative_to(dataset) for p in dataset.rglob("*")) == before


def test_text_from_copies_the_mode_and_refuses_another(datasets, tiny_assets, tmp_path):
    with pytest.raises(Stage1Error, match="holds compact text, this config exact; set --text.mode compact") as exc:
        encode(datasets["tars"], tmp_path / "image", tiny_assets, text_from=datasets["compact"])
    assert "\n" not in str(exc.value) and not (tmp_path / "image").exists()
    encode(datasets["tars"], tmp_path / "image", tiny_assets, COMPACT, text_from=datasets["compact"])
    assert contract.read_identity(tmp_path / "image").text_mode == contract.COMPACT_TEXT
    with pytest.raises(Stage1Error, match="encoded with another identity") as exc:  # its text, now exact
        encode(datasets["tars"], tmp_path / "image", tiny_assets, text_from=datasets["exact"])
    assert "text_mode" in str(exc.value) and "\n" not in str(exc.value)
    lines = [line for line in _inspect(tmp_path / "image", "--tokens").splitlines() if "T5 tokens" in line]
    assert lines == ["T5 tokens per caption: this dataset's text is its text dataset's; inspect that one with --tokens"]


def _inspect(dataset: Path, *args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert inspect_main([str(dataset), *args]) == 0
    return out.getvalue()


def test_a_compact_prompt_set_stores_lengths_and_is_refused_beside_an_exact_dataset(datasets, tiny_assets, tmp_path):
    prompts = ["a red cube", "", "a photo of " + "very " * 300 + "long prompt"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts))
    config = load_config(TINY_CONFIG, [("text.t5_max_length", str(MAX_LENGTH)), *COMPACT])
    assert encode_prompt_set(config, tmp_path / "prompts.txt", tmp_path / "set", tiny_assets)
    lengths = stored(tmp_path / "set" / contract.PROMPTS_STORE, contract.T5_LENGTH)
    assert lengths.tolist() == expected_lengths(tiny_assets, [p for p in prompts if p])
    assert load_prompt_set(tmp_path / "set", contract.read_identity(datasets["compact"]), -1).t5_length.tolist() == lengths.tolist()
    with pytest.raises(ContractError, match="other text encoders than the training dataset .*\n  text_mode: 'compact' != None"):
        load_prompt_set(tmp_path / "set", contract.read_identity(datasets["exact"]), -1)


# --------------------------------------------------------------------------- verify and inspect


def lying_copy(datasets: Path, tmp_path: Path, edit) -> Path:
    """A compact store copied and rewritten through zarr (so its chunk CRCs are valid) by ``edit``."""
    source = contract.committed_store_paths(datasets)[0]
    store = Path(shutil.copytree(source, tmp_path / source.name))
    edit(zarr.open_group(store, mode="r+"))
    return store


def test_verify_names_a_store_whose_padding_or_lengths_lie(datasets, tmp_path):
    identity = contract.read_identity(datasets["compact"])
    assert "VERIFIED" in _inspect(datasets["compact"], "--verify", "--workers", "1")  # every store and the empty prompt

    first_store = contract.committed_store_paths(datasets["compact"])[0]
    short = int(np.flatnonzero(stored(first_store, contract.T5_LENGTH) < MAX_LENGTH - 1)[0])

    def nonzero_padding(group: zarr.Group) -> None:
        group[contract.T5][short, int(group[contract.T5_LENGTH][short]) + 1, 0] = 1.0

    def bad_length(group: zarr.Group) -> None:
        group[contract.T5_LENGTH][3] = 0

    problems = check_store(lying_copy(datasets["compact"], tmp_path / "a", nonzero_padding), identity).problems
    lie = f"t5: 1 sample(s) hold nonzero rows at or after their t5_length (first: sample {short},"
    assert any(lie in p for p in problems), problems
    problems = check_store(lying_copy(datasets["compact"], tmp_path / "b", bad_length), identity).problems
    assert any(f"t5_length: 1 sample(s) outside [1, {MAX_LENGTH}] (first: sample 3, length 0)" in p for p in problems), problems


@pytest.mark.parametrize("mode", ["exact", "compact"])
def test_inspect_tokens_reports_the_distribution_in_either_mode(datasets, tiny_assets, mode, capsys):
    captions = [str(c) for s in contract.committed_store_paths(datasets[mode]) for c in stored(s, contract.CAPTION)]
    lengths = np.array(expected_lengths(tiny_assets, captions))
    assert inspect_main([str(datasets[mode]), "--tokens", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["tokens"]
    assert got["source"] == ("t5_length" if mode == "compact" else "tokenized captions")
    assert got["samples"] == got["of_samples"] == len(lengths)
    assert got["mean"] == pytest.approx(lengths.mean())
    assert (got["p50"], got["p99"]) == pytest.approx((np.percentile(lengths, 50), np.percentile(lengths, 99)))
    assert (got["max"], got["truncated"]) == (lengths.max(), (lengths == MAX_LENGTH).sum()) and got["truncated"]
    assert inspect_main([str(datasets[mode]), "--tokens", "7"]) == 0
    text = capsys.readouterr().out
    assert "T5 tokens" in text and f", 7 of {len(lengths)} samples, spread evenly)" in text
    assert f"text {mode}" in text and f"of the {MAX_LENGTH} stored T5 rows per sample are real tokens" in text


def test_inspect_tokens_says_in_one_line_when_the_tokenizer_is_gone(datasets, tmp_path, capsys):
    dataset = Path(shutil.copytree(datasets["exact"], tmp_path / "exact"))
    meta = json.loads((dataset / contract.DATASET_FILE).read_text())
    (dataset / contract.DATASET_FILE).write_text(json.dumps(meta | {contract.ASSETS_DIR_KEY: str(tmp_path / "gone")}))
    assert inspect_main([str(dataset), "--tokens"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "T5 tokens per caption" in line]
    assert lines == [f"T5 tokens per caption: no T5 tokenizer at {tmp_path / 'gone' / 'tokenizer_2'} "
                     f"(dataset.json's assets_dir); not counted"]


def test_the_bytes_benchmark_prices_each_real_token_and_nothing_for_the_padding(capsys):
    from bench.compact_bytes import main as bench_main

    assert bench_main(["--samples", "2", "--lengths", "1", "256"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    figures = {(r["figure"], r.get("t5_length")): r["value"] for r in records}
    exact = figures[("exact_bytes_per_sample", None)]
    short, full = figures[("compact_bytes_per_sample", 1)], figures[("compact_bytes_per_sample", 256)]
    assert full == pytest.approx(exact, rel=0.01) and short < exact / 10
    assert figures[("compact_bytes_per_real_token", None)] == pytest.approx((full - short) / 255, rel=0.01)
    assert all({"device", "torch", "commit", "date"} <= r.keys() for r in records)
