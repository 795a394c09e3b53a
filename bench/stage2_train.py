#!/usr/bin/env python3
"""Stage 2 side by side on one GPU: TorchTitan's own online Flux trainer vs ours, same model, batch and GPU.

    python bench/stage2_train.py [--find-max-batch] [--out results.jsonl]        # the GPU benchmark
    python bench/stage2_train.py --device cpu --tiny --find-max-batch            # smoke test, every path

Variants (``--variants``; default order online, ours_noac, ours_ac, online_compiled, ours_eo — the most
telling first; one torchrun process each, 1 GPU):

  online           TorchTitan 0.2.2's stock Flux trainer as users run it: its WebDataset loader over
                   CC12M-format tars (JPEG decode + tokenise in the loop, TorchTitan's default of 0 loader
                   workers), T5-XXL + CLIP-L + FLUX AE run every step (real shapes, random weights, cast to
                   bf16 as multi-GPU runs have them), eager, full activation checkpointing (AC).
  online_compiled  the same with each transformer block torch.compile'd (stock compiles only the loss).
  ours_ac          ``python -m stage2_train`` on a real-shape Stage 1 dataset: blocks compiled, full AC.
  ours_noac        the same without AC.
  ours_eo          the same with AC on every other block.

online_compiled vs ours_ac isolates what removing the encoders buys; ours_noac adds what the freed
memory buys. Both trainers run fp32 master weights under TorchTitan's bf16 autocast (one GPU, no FSDP),
AdamW, gradient clipping, CFG dropout 0.447, 256 px, T5 length 256.

Per variant it prints (JSON lines via ``bench.common.emit``): samples/s/GPU, MFU (FLOPs per sample from
``stage2_train.flops``, TorchTitan 0.3.0's Flux formula; peak from ``torchtitan.tools.utils.get_peak_flops``),
peak memory (reserved and active), the share of step time spent waiting for data and, with
``--find-max-batch``, the largest batch that fits (a short list of sizes, 2 steps each, in the same
process after the timed steps, stopping at the first out-of-memory error). Then the speed-ups and the
probe's targets. Step times and memory are the trainers' own TorchTitan metrics records (log every
``--warmup`` steps; the first record(s) hold the warm-up and compilation and are dropped).

Model: reduced-depth FLUX.1-schnell. ``--depth auto`` takes 8 double + 16 single blocks (5.0 B
parameters) where it fits and 4 + 8 (2.5 B) otherwise: with fp32 master weights and AdamW, 5.0 B
parameters hold 75 GiB of weights, gradients and moments before any activation, more than an 80 GB
H100 has beside T5-XXL — so 8x16 needs an H200 (141 GB); 4x8 is what DESIGN §4 compared on the H100.

On a lent GPU machine (no network; TorchTitan, zarr, datasets, webdataset travel as wheels in .whl/):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
    python3 bench/stage2_train.py --find-max-batch --out $OUT/stage2_train.jsonl 2>&1 | tee $OUT/stage2_console.log
and merge the figures of several runs with ``--report A.jsonl B.jsonl``.

A whole run is bounded by ``--time-budget-s``: later variants' timing is reserved first, searches get
what is left, and a variant past its share is stopped (what it logged is kept). The human summary goes
to stderr, the figures to stdout and ``--out``; each child's log to ``--logs`` (default: beside --out).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# Run as a script, sys.path[0] is bench/ and ``import stage2_train`` would find this file: use the repo.
if sys.path and Path(sys.path[0]).resolve() == REPO / "bench":
    sys.path[0] = str(REPO)
elif str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
# This process must not create a CUDA context (it would hold GPU memory while the trainers measure theirs).
_SET_NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK" not in os.environ
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

from bench import common  # noqa: E402

BENCHMARK = "stage2_train"
VARIANTS: dict[str, dict[str, Any]] = {
    "online": {"trainer": "online", "compile": False, "ac": "full",
               "description": "TorchTitan stock Flux trainer, online T5-XXL/CLIP-L/AE (bf16), own WebDataset loader, eager, full AC"},
    "online_compiled": {"trainer": "online", "compile": True, "ac": "full",
                        "description": "same, each transformer block torch.compile'd"},
    "ours_ac": {"trainer": "ours", "compile": True, "ac": "full",
                "description": "stage2_train on a Stage 1 dataset, blocks compiled, full AC"},
    "ours_noac": {"trainer": "ours", "compile": True, "ac": "none",
                  "description": "stage2_train, blocks compiled, no AC"},
    "ours_eo": {"trainer": "ours", "compile": True, "ac": "every-other",
                "description": "stage2_train, blocks compiled, AC on every other block"},
}  # fmt: skip
DEFAULT_VARIANTS = "online,ours_noac,ours_ac,online_compiled,ours_eo"
"""Most telling first, should the time budget run out; compiled graphs are cached on disk
(TORCHINDUCTOR_CACHE_DIR, shared by the variants), so online_compiled reuses ours_ac's checkpointed
block graphs and ours_eo both kinds."""
# Seconds a variant's timing phase is expected to take on one H100 (start-up, encoder/model init,
# compilation, steps): reserved for the variants still to come when a search decides whether to go on.
GPU_ESTIMATE_S = {"online": 75, "ours_noac": 130, "ours_ac": 110, "online_compiled": 90, "ours_eo": 60}
CPU_ESTIMATE_S = {"online": 40, "ours_noac": 120, "ours_ac": 90, "online_compiled": 90, "ours_eo": 90}
TARGETS = {"speedup_vs_online": 2.0, "speedup_vs_online_compiled": 1.3, "mfu_pct": 45.0, "data_wait_pct": 2.0}

# Real sizes (random weights from these config.json files in test mode).
T5_XXL = {
    "architectures": ["T5EncoderModel"], "model_type": "t5", "d_model": 4096, "d_ff": 10240, "d_kv": 64,
    "num_heads": 64, "num_layers": 24, "num_decoder_layers": 24, "feed_forward_proj": "gated-gelu",
    "vocab_size": 32128, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
    "dropout_rate": 0.1, "layer_norm_epsilon": 1e-6, "initializer_factor": 1.0, "is_encoder_decoder": True,
    "tie_word_embeddings": False, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
}  # fmt: skip
CLIP_L_TEXT = {
    "architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "hidden_size": 768,
    "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12, "max_position_embeddings": 77,
    "vocab_size": 49408, "hidden_act": "quick_gelu", "projection_dim": 768, "layer_norm_eps": 1e-5,
    "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
}  # fmt: skip
TINY_T5 = {**T5_XXL, "d_model": 32, "d_ff": 64, "d_kv": 16, "num_heads": 2, "num_layers": 2, "num_decoder_layers": 2, "vocab_size": 1024}
TINY_CLIP = {**CLIP_L_TEXT, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2,
             "projection_dim": 32, "vocab_size": 1024}  # fmt: skip
ENCODER_BF16_GIB = 9.3
"""T5-XXL (4.76 B) + CLIP-L text (123 M) + AE (84 M) in bf16."""


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- device -----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Device:
    kind: str  # "cuda" | "cpu"
    name: str
    capacity_gib: float | None


def probe_device(requested: str) -> Device:
    """The GPU's name and memory from nvidia-smi (no CUDA context in this process)."""
    if requested != "cpu":
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=60, check=True,
            ).stdout.strip().splitlines()  # fmt: skip
            name, mib = out[0].rsplit(",", 1)
            return Device("cuda", name.strip(), float(mib) / 1024)
        except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
            if requested == "cuda":
                raise SystemExit(f"--device cuda: nvidia-smi found no GPU ({exc})") from exc
    import platform

    return Device("cpu", f"CPU ({platform.processor() or platform.machine()})", None)


# --- model ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Model:
    depth: int
    single: int
    tiny: bool
    online_name: str
    ours_name: str
    ours_base: str
    nparams: int
    flops_per_sample: int
    sequence: int

    @property
    def label(self) -> str:
        return f"{'tiny' if self.tiny else 'schnell'} {self.depth} double + {self.single} single blocks"


def count_params(args: Any) -> int:
    import torch
    from torchtitan.models.flux.model.model import FluxModel

    with torch.device("meta"):
        return sum(p.numel() for p in FluxModel(args).parameters())


def flops_per_sample(args: Any, nparams: int, img_size: int, t5_len: int) -> tuple[int, int]:
    """(FLOPs per training sample, sequence length) with Stage 2's formula (TorchTitan 0.3.0's)."""
    try:
        from stage2_train.flops import flux_training_flops_per_sample, image_tokens
    except ImportError:  # the formula, should stage2_train not carry it
        def image_tokens(size, ae, patch):  # noqa: E306
            return (size // 2 ** (len(ae.ch_mult) - 1) // patch) ** 2

        def flux_training_flops_per_sample(a, n, seq):  # noqa: E306
            h, r = a.hidden_size, a.mlp_ratio
            f = 6 * n - 6 * int(h * h * (4 + 2 * r)) * a.depth
            f -= 6 * (12 * h * h * a.depth + 3 * h * h * a.depth_single_blocks + 2 * h * h) * (seq - 1) // seq
            return (f + 6 * h * seq * (a.depth + a.depth_single_blocks)) * seq
    sequence = image_tokens(img_size, args.autoencoder_params, 2) + t5_len
    return flux_training_flops_per_sample(args, nparams, sequence), sequence


def build_model(depth: int, single: int, tiny: bool, img_size: int, t5_len: int) -> Model:
    """Both trainers' flavors for this depth, checked to be the same model."""
    from bench.stage2_online import bench_flavor
    from stage2_train.flavors import FLAVORS

    ours_base = next((n for n in (["flux-tiny"] if tiny else ["flux-schnell-8x16", "flux-schnell"]) if n in FLAVORS), None)
    if ours_base is None:
        raise SystemExit(f"stage2_train.flavors.FLAVORS has none of the expected base flavors: {sorted(FLAVORS)}")
    online = bench_flavor({"depth": depth, "single": single, "tiny": tiny})
    ours = dataclasses.replace(FLAVORS[ours_base], depth=depth, depth_single_blocks=single)
    fields = [f.name for f in dataclasses.fields(online)]
    different = [f for f in fields if getattr(online, f) != getattr(ours, f)]
    if different:
        raise SystemExit(f"stock and Stage 2 flavors differ in {different}: not the same model")
    nparams = count_params(online)
    flops, sequence = flops_per_sample(online, nparams, img_size, t5_len)
    name = f"bench-{'tiny' if tiny else 'schnell'}-{depth}x{single}"
    return Model(depth, single, tiny, name, name, ours_base, nparams, flops, sequence)


def choose_depth(spec: str, device: Device, variants: list[str], tiny: bool) -> tuple[int, int, str]:
    if spec != "auto":
        d, s = (int(x) for x in spec.lower().split("x"))
        return d, s, "requested"
    if tiny:
        return 2, 2, "tiny smoke model"
    if device.capacity_gib is None:
        return 8, 16, "no GPU"
    from bench.stage2_online import bench_flavor

    encoders = ENCODER_BF16_GIB if any(VARIANTS[v]["trainer"] == "online" for v in variants) else 0.0
    for d, s in ((8, 16), (4, 8)):
        n = count_params(bench_flavor({"depth": d, "single": s}))
        # fp32 weights + grads + AdamW moments (16 B) + bf16 autocast copies (2 B), encoders, 6 GiB slack.
        need = 18 * n / 2**30 + encoders + 6
        if need <= device.capacity_gib:
            return d, s, f"{d}x{s} needs ~{need:.0f} GiB of {device.capacity_gib:.0f}"
        log(f"depth {d}x{s} ({n / 1e9:.2f} B params) needs ~{need:.0f} GiB with fp32 master weights + AdamW "
            f"+ encoders; this GPU has {device.capacity_gib:.0f} GiB -> trying a shallower model")  # fmt: skip
    return 4, 8, "smallest candidate"


# --- inputs -----------------------------------------------------------------------------------------


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def write_encoder_configs(root: Path, tiny: bool) -> tuple[Path, Path]:
    """``t5/config.json`` and ``clip/config.json`` (the CLIP folder name must contain "clip")."""
    t5, clip = root / "t5", root / "clip"
    if "clip" in str(t5).lower():
        raise SystemExit(f"--workdir must not contain 'clip' ({t5}): TorchTitan would take T5 for CLIP")
    write_json(t5 / "config.json", TINY_T5 if tiny else T5_XXL)
    write_json(clip / "config.json", TINY_CLIP if tiny else CLIP_L_TEXT)
    return t5, clip


def write_tokenizer(out: Path, captions: list[str]) -> Path:
    """A small word-level ``tokenizer.json`` (+ config with BOS/EOS/PAD) for TorchTitan's test tokenizer.
    Captions are padded/truncated to 256 (T5) and 77 (CLIP) tokens, so the encoders' cost is the real one."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(captions, trainers.WordLevelTrainer(vocab_size=1000, special_tokens=["<pad>", "</s>", "<unk>", "<s>"]))
    tok.save(str(out / "tokenizer.json"))
    write_json(out / "tokenizer_config.json", {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"})
    return out


def _own_sample_tars(out: Path, shards: int, per_shard: int, seed: int) -> None:
    """Minimal CC12M-format tars (real JPEGs, 1 in 8 below 256 px as in CC12M's rejects) — used when
    ``shared.assets.write_sample_tars`` is unavailable or ``--own-tars`` asks for it."""
    from PIL import Image, ImageDraw

    words = "a red blue dog cat house tree on the in with under beside old small large bright photo of".split()
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with tarfile.open(out / f"cc12m-train-{s:04d}.tar", "w") as tar:
            for i in range(s * per_shard, (s + 1) * per_shard):
                short = rng.randint(128, 255) if i % 8 == 3 else rng.randint(256, 640)
                long_side = min(int(short * rng.choice((1.0, 1.33, 1.5, 1.78))), 768)
                w, h = (long_side, short) if rng.random() < 0.5 else (short, long_side)
                img = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
                draw = ImageDraw.Draw(img)
                for _ in range(4):
                    x, y = rng.randrange(w), rng.randrange(h)
                    draw.ellipse((x, y, x + rng.randrange(8, w), y + rng.randrange(8, h)), fill=tuple(rng.randrange(256) for _ in range(3)))
                buf = io.BytesIO()
                img.save(buf, "JPEG", quality=90)
                caption = " ".join(rng.choice(words) for _ in range(rng.randint(5, 40)))
                key = f"{i:09d}"
                for name, data in ((f"{key}.jpg", buf.getvalue()), (f"{key}.txt", caption.encode()),
                                   (f"{key}.json", json.dumps({"key": key, "caption": caption, "width": w, "height": h}).encode())):  # fmt: skip
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def prepare_tars(root: Path, shards: int, per_shard: int, own: bool) -> tuple[Path, list[str]]:
    out = root / f"tars-{shards}x{per_shard}{'-own' if own else ''}"
    if not (out / ".complete").exists():
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        if own:
            _own_sample_tars(out, shards, per_shard, seed=0)
        else:
            try:
                from shared.assets import write_sample_tars

                write_sample_tars(out, shards, per_shard, 0)
            except (ImportError, TypeError) as exc:
                log(f"shared.assets.write_sample_tars unusable ({exc}); using the bench's own generator")
                shutil.rmtree(out, ignore_errors=True)
                _own_sample_tars(out, shards, per_shard, seed=0)
        (out / ".complete").touch()
        log(f"wrote {shards} x {per_shard} CC12M-format samples to {out} in {time.perf_counter() - started:.0f} s")
    captions = []
    for path in sorted(out.glob("*.tar")):
        with tarfile.open(path) as tar:
            captions += [tar.extractfile(m).read().decode() for m in tar.getmembers() if m.name.endswith(".txt")]
    return out, captions


def prepare_dataset(root: Path, model: Model, stores: int, per_store: int) -> Path:
    """A Stage 1 dataset with real shapes and random values (``shared.synthetic``)."""
    from shared.synthetic import schnell_identity, write_synthetic_dataset

    out = root / f"stage1-{'tiny' if model.tiny else 'schnell'}-{stores}x{per_store}"
    if (out / ".complete").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    identity = schnell_identity("bfloat16")
    if model.tiny:
        from stage2_train.flavors import FLAVORS

        identity = dataclasses.replace(
            identity, t5_dim=32, clip_dim=32, ae_params=dataclasses.asdict(FLAVORS[model.ours_base].autoencoder_params)
        )
    started = time.perf_counter()
    write_synthetic_dataset(out, identity, stores, per_store)
    (out / ".complete").touch()
    log(f"wrote a {stores} x {per_store}-sample Stage 1 dataset to {out} in {time.perf_counter() - started:.0f} s")
    return out


# --- one variant ------------------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def write_toml(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def job_config(variant: str, args: argparse.Namespace, model: Model, device: Device, inputs: dict[str, Path], run_dir: Path) -> dict:
    """The TOML of one variant: everything both trainers share, then what each needs."""
    spec = VARIANTS[variant]
    ac = {"full": {"mode": "full"}, "none": {"mode": "none"}, "every-other": {"mode": "selective", "selective_ac_option": "2"}}
    online = spec["trainer"] == "online"
    workers = args.online_workers if online else args.ours_workers
    # The stock trainer keeps TorchTitan's loader defaults (0 workers, no pinning) unless told otherwise.
    loader = {"num_workers": workers, "pin_memory": device.kind == "cuda" and (workers > 0 or not online)}
    if workers > 0:
        loader |= {"persistent_workers": True, "prefetch_factor": args.prefetch}
    training = {
        "local_batch_size": args.batch,
        "steps": 1_000_000,  # the phase plan stops the loop; a long schedule keeps the LR scheduler valid
        "max_norm": 1.0,
        "mixed_precision_param": "bfloat16",
        "mixed_precision_reduce": "float32",
        "classifier_free_guidance_prob": 0.447,
        "img_size": args.img_size,
        "dataset_path": str(inputs["tars"] if online else inputs["dataset"]),
    }
    if online:
        training |= {"dataset": "cc12m-test", "test_mode": True}
    sections = {
        "job": {
            "dump_folder": str(run_dir),
            "description": f"bench/stage2_train.py {variant}",
            "custom_config_module": "torchtitan.models.flux.job_config" if online else "stage2_train.job_config",
        },
        "profiling": {"enable_profiling": False, "enable_memory_snapshot": False},
        "metrics": {"log_freq": args.warmup, "enable_tensorboard": False, "enable_wandb": False, "disable_color_printing": True},
        "model": {
            "name": "flux" if online else "flux_precomputed",
            "flavor": model.online_name if online else model.ours_name,
            "hf_assets_path": str(inputs["tokenizer"]) if online else ".",
        },
        "optimizer": {"name": "AdamW", "lr": 1e-4, "eps": 1e-8, "implementation": "fused" if device.kind == "cuda" else "foreach"},
        "lr_scheduler": {"warmup_steps": 1},
        "training": training,
        "training.dataloader": loader,
        "encoder": {"max_t5_encoding_len": args.t5_len}
        | ({"t5_encoder": str(inputs["t5"]), "clip_encoder": str(inputs["clip"]), "autoencoder_path": "random-init"} if online else {}),
        "parallelism": {"data_parallel_replicate_degree": 1, "data_parallel_shard_degree": -1},
        "activation_checkpoint": ac[spec["ac"]],
        "compile": {"enable": spec["compile"], "components": ["model", "loss"], "backend": args.compile_backend},
        "checkpoint": {"enable": False},
        "validation": {"enable": False},
        "debug": {"seed": 0},
    }
    if not online:
        sections["experimental"] = {"custom_import": "bench.stage2_hooks"}
        sections["stage2"] = {"seed": 0}
    return sections


@dataclasses.dataclass
class Outcome:
    variant: str
    status: str  # ok | oom | error | timeout | skipped
    reason: str = ""
    records: list[dict] = dataclasses.field(default_factory=list)
    log_path: Path | None = None
    wall_s: float = 0.0


def run_variant(variant: str, args, model: Model, device: Device, inputs: dict, workdir: Path, logs: Path,
                search_deadline: float, hard_timeout: float) -> Outcome:  # fmt: skip
    spec = VARIANTS[variant]
    online = spec["trainer"] == "online"
    run_dir = workdir / "runs" / variant
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    config = write_toml(run_dir / "job.toml", job_config(variant, args, model, device, inputs, run_dir))
    metrics = run_dir / "metrics.jsonl"
    plan = {
        "batch": args.batch, "warmup": args.warmup, "measure": args.steps,
        "find_max_batch": args.find_max_batch, "search": args.search, "search_steps": args.search_steps,
        "search_deadline": search_deadline,
        "recompile_allowance_s": (90.0 if device.kind == "cuda" else 120.0) if spec["compile"] else 0.0,
    }  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not (k == "PYTORCH_NVML_BASED_CUDA_CHECK" and _SET_NVML_CHECK)}
    env |= {
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "PYTHONUNBUFFERED": "1",
        "BENCH_PLAN": json.dumps(plan),
        "BENCH_METRICS": str(metrics),
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled",
        "TORCHINDUCTOR_CACHE_DIR": str(workdir / "inductor-cache"),
    }  # fmt: skip
    if online:
        env["BENCH_FLAVOR"] = json.dumps({"name": model.online_name, "depth": model.depth, "single": model.single, "tiny": model.tiny})
    else:
        env["BENCH_OURS_FLAVOR"] = json.dumps({"name": model.ours_name, "base": model.ours_base, "depth": model.depth, "single": model.single})
    if args.fake_oom_above:
        env["BENCH_FAKE_OOM_ABOVE"] = str(args.fake_oom_above)
    if device.kind == "cpu":
        env |= {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    else:  # as TorchTitan's run_train.sh sets it, for both trainers
        env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
        "-m", "bench.stage2_online" if online else "stage2_train", "--job.config_file", str(config),
    ]  # fmt: skip
    log_path = logs / f"{variant}.log"
    log(f"{variant}: starting ({spec['description']}; batch {args.batch}; stop at {hard_timeout:.0f} s) -> {log_path}")
    started = time.monotonic()
    with open(log_path, "w") as log_file:
        log_file.write(f"$ {' '.join(command)}\n# {config}:\n{config.read_text()}\n")
        log_file.flush()
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, hard_timeout))
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop(proc)
            rc = proc.returncode
    outcome = Outcome(variant, "ok", records=read_records(metrics), log_path=log_path, wall_s=time.monotonic() - started)
    if timed_out:
        outcome.status, outcome.reason = "timeout", f"stopped after {hard_timeout:.0f} s (time budget)"
    elif rc != 0:
        outcome.status, outcome.reason = "error", f"exit code {rc}: {_error_line(log_path)}"
    log(f"{variant}: {outcome.status} after {outcome.wall_s:.0f} s {outcome.reason}")
    if outcome.status == "error":
        sys.stderr.write(_tail(log_path, 40))
    return outcome


def _stop(proc: subprocess.Popen) -> None:
    """End the torchrun we started and its workers (their own process group)."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def _tail(path: Path, lines: int) -> str:
    text = path.read_text(errors="replace").splitlines()
    return "".join(f"    | {line}\n" for line in text[-lines:])


def _error_line(path: Path) -> str:
    """The most telling line of a failed child's log (the last exception raised)."""
    for line in reversed(path.read_text(errors="replace").splitlines()):
        stripped = line.strip()
        if stripped and ("Error" in stripped or "Exception" in stripped) and not stripped.startswith(("File ", "raise")):
            return stripped[:300]
    return "see log"


def read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            pass
    return records


# --- figures ----------------------------------------------------------------------------------------


def step_figures(metrics: dict[str, float]) -> dict[str, float | None]:
    """THE ONE PLACE THAT KNOWS THE TRAINERS' METRIC NAMES (TorchTitan 0.2.2's ``MetricsProcessor.log``,
    which both trainers use; Stage 2 adds its own names). Adapt here if a trainer's record changes.

    Returns per logged interval: seconds per step, share of it spent waiting for data (0..1), and what
    the trainer itself computed for samples/s and MFU (None where it has no such figure)."""
    step_time = metrics.get("time_metrics/end_to_end(s)")
    wait = metrics.get("time_metrics/data_wait_share")
    if wait is None and "time_metrics/data_loading(%)" in metrics:
        wait = metrics["time_metrics/data_loading(%)"] / 100
    return {
        "step_time_s": step_time,
        "data_wait_share": wait,
        "logged_samples_per_s": metrics.get("throughput/samples_per_second_per_gpu"),
        "logged_mfu_pct": metrics.get("mfu(%)") if "throughput/samples_per_second_per_gpu" in metrics else None,
        "loss": metrics.get("loss_metrics/global_avg_loss"),
        "peak_reserved_gib": metrics.get("memory/max_reserved(GiB)"),
        "peak_active_gib": metrics.get("memory/max_active(GiB)"),
    }


def summarize(outcome: Outcome, model: Model, peak_flops: float) -> dict[str, Any]:
    """Timed throughput, MFU, memory, data wait and the batch-size search of one variant's records."""
    records = outcome.records
    plan = next((r["plan"] for r in records if r["kind"] == "plan"), None)
    phases = [r for r in records if r["kind"] == "phase"]
    summary: dict[str, Any] = {"status": outcome.status, "reason": outcome.reason}
    encoders = next((r["encoders"] for r in records if r["kind"] == "encoders"), None)
    if encoders:
        summary["encoders"] = encoders
    timed = [p for p in phases if p["phase"] == "timing" and p["status"] == "ok"]
    if plan and timed:
        phase = timed[-1]
        start, warmup, measure = phase["phase_start_step"], plan["warmup"], plan["measure"]
        steps = [
            step_figures(r["metrics"]) | {"step": r["step"]}
            for r in records
            if r["kind"] == "metrics" and r["phase"] == "timing" and r["batch"] == phase["batch"]
            and start + warmup < r["step"] <= start + warmup + measure
        ]  # fmt: skip
        times = [s["step_time_s"] for s in steps if s["step_time_s"]]
        # Time from the phase's start to its first logged step: compilation and first-step set-up.
        begin = next((r["time"] for r in records if r["kind"] == "phase_start" and r.get("phase_start_step") == start), None)
        first = next((r["time"] for r in records if r["kind"] == "metrics" and r["phase"] == "timing" and r["step"] > start), None)
        if times:
            step_time = sum(times) / len(times)
            waits = [s["data_wait_share"] for s in steps if s["data_wait_share"] is not None]
            samples_per_s = phase["batch"] / step_time
            logged_sps = [s["logged_samples_per_s"] for s in steps if s["logged_samples_per_s"]]
            logged_mfu = [s["logged_mfu_pct"] for s in steps if s["logged_mfu_pct"] is not None]
            summary |= {
                "status": "ok",
                "batch": phase["batch"],
                "measured_steps": len(times) * warmup,
                "step_time_s": step_time,
                "step_time_spread_s": [min(times), max(times)],
                "samples_per_s": samples_per_s,
                "mfu_pct": 100 * model.flops_per_sample * samples_per_s / peak_flops,
                "data_wait_pct": 100 * sum(waits) / len(waits) if waits else None,
                "peak_reserved_gib": phase.get("peak_reserved_gib"),
                "peak_active_gib": phase.get("peak_active_gib"),
                "loss": steps[-1]["loss"],
                "first_log_s": round(first - begin, 1) if begin and first else None,
                "process_wall_s": round(outcome.wall_s, 1),
                "trainer_samples_per_s": sum(logged_sps) / len(logged_sps) if logged_sps else None,
                "trainer_mfu_pct": sum(logged_mfu) / len(logged_mfu) if logged_mfu else None,
            }
        elif outcome.status == "ok":
            summary |= {"status": "error", "reason": "no measured steps in the metrics file"}
    elif outcome.status == "ok":
        summary |= {"status": "oom" if any(p["status"] == "oom" for p in phases) else "error",
                    "reason": "no batch size fitted" if phases else "no timing phase recorded"}  # fmt: skip
    tried = []
    for p in phases:
        entry = {"batch": p["batch"], "phase": p["phase"], "status": p["status"], "peak_reserved_gib": p.get("peak_reserved_gib")}
        last = [r for r in records if r["kind"] == "metrics" and r["phase"] == "search" and r["batch"] == p["batch"]]
        if p["phase"] == "search" and p["status"] == "ok" and last:  # indicative: one step, after any recompilation
            entry["samples_per_s_last_step"] = round(p["batch"] / step_figures(last[-1]["metrics"])["step_time_s"], 2)
        tried.append(entry)
    fits = [t["batch"] for t in tried if t["status"] == "ok"]
    ooms = [t["batch"] for t in tried if t["status"] == "oom" and (not fits or t["batch"] > max(fits))]
    searched = bool(plan and (plan.get("find_max_batch") or any(t["status"] == "oom" for t in tried)))
    if searched:
        largest = max(fits) if fits else None
        cut = next((r for r in records if r["kind"] == "search_cut"), None)
        if largest is None:
            bound = "none of the sizes tried fits"
        elif ooms:
            bound = f"fits {largest}, out of memory at {min(ooms)}"
        elif cut:
            bound = f"fits >= {largest} (search stopped by the time budget before {cut['next_batch']})"
        elif outcome.status == "timeout":
            bound = f"fits >= {largest} (stopped by the time budget)"
        else:
            bound = f"fits >= {largest} (largest size tried)"
        summary |= {"max_batch": largest, "max_batch_bound": bound, "batch_sizes_tried": tried}
    return summary


class Figures:
    """Emit JSON lines to stdout (``bench.common.emit``) and append the same records to ``--out``."""

    def __init__(self, out: Path | None, extra: dict[str, Any]) -> None:
        self.out, self.extra = out, extra
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, figure: str, value: Any, unit: str, **extra: Any) -> None:
        record = common.emit(BENCHMARK, figure, value, unit, **self.extra, **extra)
        if self.out:
            with open(self.out, "a") as f:
                f.write(json.dumps(record) + "\n")


def emit_variant(fig: Figures, variant: str, s: dict[str, Any], args) -> None:
    spec = VARIANTS[variant]
    extra = {
        "variant": variant, "description": spec["description"], "trainer": spec["trainer"],
        "entry": "torchrun -m bench.stage2_online (TorchTitan FluxTrainer)" if spec["trainer"] == "online" else "torchrun -m stage2_train",
        "compile_blocks": spec["compile"], "activation_checkpointing": spec["ac"], "batch": s.get("batch", args.batch),
        "loader_workers": args.online_workers if spec["trainer"] == "online" else args.ours_workers,
    }  # fmt: skip
    if s.get("encoders"):
        extra["encoders_in_loop"] = s["encoders"]
    if s["status"] != "ok" and "samples_per_s" not in s:
        fig(f"{variant}.status", s["status"], "", reason=s.get("reason", ""), **extra)
    if "samples_per_s" in s:
        timing = {"measured_steps": s["measured_steps"], "warmup_steps": args.warmup, "step_time_s": round(s["step_time_s"], 4),
                  "step_time_spread_s": [round(t, 4) for t in s["step_time_spread_s"]], "loss": s["loss"],
                  "first_log_s": s["first_log_s"], "process_wall_s": s["process_wall_s"]}  # fmt: skip
        fig(f"{variant}.samples_per_s_per_gpu", round(s["samples_per_s"], 3), "samples/s",
            trainer_logged=s["trainer_samples_per_s"], **timing, **extra)  # fmt: skip
        fig(f"{variant}.mfu", round(s["mfu_pct"], 2), "%", trainer_logged=s["trainer_mfu_pct"], **extra)
        fig(f"{variant}.peak_memory_reserved", s["peak_reserved_gib"], "GiB", peak_active_gib=s["peak_active_gib"], **extra)
        fig(f"{variant}.data_wait_share", None if s["data_wait_pct"] is None else round(s["data_wait_pct"], 3), "%", **extra)
    if "max_batch_bound" in s:
        fig(f"{variant}.max_batch", s["max_batch"], "samples", bound=s["max_batch_bound"], tried=s["batch_sizes_tried"], **extra)


def emit_comparison(fig: Figures | None, summaries: dict[str, dict]) -> list[str]:
    """Speed-ups and the probe's targets (emitted unless ``fig`` is None); returns the human summary's lines."""
    fig = fig or (lambda *a, **k: None)
    sps = {v: s["samples_per_s"] for v, s in summaries.items() if "samples_per_s" in s}
    lines = []
    for ours in (v for v in sps if VARIANTS[v]["trainer"] == "ours"):
        for base in ("online", "online_compiled"):
            if base in sps:
                ratio = sps[ours] / sps[base]
                same_batch = summaries[ours]["batch"] == summaries[base]["batch"]
                fig(f"speedup.{ours}_vs_{base}", round(ratio, 3), "x", batches=[summaries[ours]["batch"], summaries[base]["batch"]],
                    same_batch=same_batch)  # fmt: skip
    if "online" in sps and "online_compiled" in sps:
        fig("speedup.online_compiled_vs_online", round(sps["online_compiled"] / sps["online"], 3), "x")
    ours = {v: x for v, x in sps.items() if VARIANTS[v]["trainer"] == "ours"}
    if not ours:
        return lines
    best = max(ours, key=ours.get)
    checks = []
    for base, key in (("online", "speedup_vs_online"), ("online_compiled", "speedup_vs_online_compiled")):
        if base in sps:
            checks.append((f"{best} >= {TARGETS[key]}x {base}", ours[best] / sps[base], ours[best] / sps[base] >= TARGETS[key], "x"))
    checks.append((f"{best} MFU >= {TARGETS['mfu_pct']:.0f} %", summaries[best]["mfu_pct"], summaries[best]["mfu_pct"] >= TARGETS["mfu_pct"], "%"))
    waits = {v: summaries[v]["data_wait_pct"] for v in ours if summaries[v].get("data_wait_pct") is not None}
    if waits:
        worst = max(waits, key=waits.get)
        checks.append((f"data wait < {TARGETS['data_wait_pct']:.0f} % (worst: {worst})", waits[worst], waits[worst] < TARGETS["data_wait_pct"], "%"))
    for name, value, ok, unit in checks:
        fig(f"target.{name}", "pass" if ok else "fail", "", measured=round(value, 3), measured_unit=unit, best_ours=best)
        lines.append(f"  target {name:<48} {'PASS' if ok else 'FAIL'}  ({value:.2f}{' ' if unit == '%' else ''}{unit})")
    return lines


def table_title(label: str, nparams: int, flops: float, device: str, peak_flops: float) -> str:
    return (f"Stage 2 side by side — {label}, {nparams / 1e9:.2f} B params, {flops / 1e12:.2f} TFLOP/sample, "
            f"on {device} (peak {peak_flops / 1e12:.0f} TFLOP/s)")  # fmt: skip


def human_table(summaries: dict[str, dict], title: str) -> str:
    sps = {v: s.get("samples_per_s") for v, s in summaries.items()}
    rows = [title,
            f"  {'variant':<16} {'batch':>5} {'samples/s':>10} {'MFU %':>7} {'peak GiB':>9} {'data wait %':>12} "
            f"{'x online':>9} {'x compiled':>11}  max batch"]  # fmt: skip
    for v, s in summaries.items():
        if "samples_per_s" not in s:
            rows.append(f"  {v:<16} {s['status'].upper()}: {s.get('reason', '')}"
                        + (f"  [max batch: {s['max_batch_bound']}]" if "max_batch_bound" in s else ""))  # fmt: skip
            continue
        ratio = {base: f"{s['samples_per_s'] / sps[base]:.2f}" if sps.get(base) else "-" for base in ("online", "online_compiled")}
        wait = "-" if s["data_wait_pct"] is None else f"{s['data_wait_pct']:.2f}"
        rows.append(f"  {v:<16} {s['batch']:>5} {s['samples_per_s']:>10.2f} {s['mfu_pct']:>7.1f} {s['peak_reserved_gib'] or 0:>9.1f} "
                    f"{wait:>12} {ratio['online']:>9} {ratio['online_compiled']:>11}  {s.get('max_batch_bound', '(not searched)')}")  # fmt: skip
    return "\n".join(rows)


# --- main -------------------------------------------------------------------------------------------


def report(paths: list[Path]) -> int:
    """The summary table and targets from figures this benchmark wrote (e.g. two commands' --out files;
    for the same variant, the later record wins). Emits nothing."""
    summaries: dict[str, dict] = {}
    context: dict[str, Any] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if r.get("benchmark") != BENCHMARK or "." not in r["figure"] or r.get("variant") not in VARIANTS:
                continue
            variant, name = r["variant"], r["figure"].split(".", 1)[1]
            if context and (r["device"], r["params"]) != (context["device"], context["params"]):
                log(f"WARNING: {path} mixes devices or models ({r['device']}, {r['params']}) with ({context['device']}, {context['params']})")
            context = r
            s = summaries.setdefault(variant, {"status": "ok"})
            if name == "status":
                summaries[variant] = {"status": r["value"], "reason": r.get("reason", "")}
            elif name == "samples_per_s_per_gpu":
                s |= {"status": "ok", "samples_per_s": r["value"], "batch": r["batch"]}
            elif name == "mfu":
                s["mfu_pct"] = r["value"]
            elif name == "peak_memory_reserved":
                s["peak_reserved_gib"] = r["value"]
            elif name == "data_wait_share":
                s["data_wait_pct"] = r["value"]
            elif name == "max_batch":
                s |= {"max_batch": r["value"], "max_batch_bound": r["bound"]}
    if not summaries:
        raise SystemExit(f"no {BENCHMARK} figures in {[str(p) for p in paths]}")
    ordered = {v: summaries[v] for v in VARIANTS if v in summaries}
    title = table_title(context["model"], context["params"], context["flops_per_sample"], context["device"], context["peak_flops"])
    print(human_table(ordered, title) + "\n" + "\n".join(emit_comparison(None, ordered)))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--tiny", action="store_true", help="tiny encoders and flavor (smoke test; implied by --device cpu defaults)")
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated subset of {DEFAULT_VARIANTS}")
    p.add_argument("--depth", default="auto", help="DOUBLExSINGLE blocks, e.g. 8x16, or auto (8x16 if it fits, else 4x8)")
    p.add_argument("--batch", type=int, help="local batch size of the timed steps (default 32; tiny 4)")
    p.add_argument("--warmup", type=int, help="steps dropped before measuring; also the log interval (default 3; tiny 1)")
    p.add_argument("--steps", type=int, help="measured steps, rounded up to a multiple of --warmup (default 9; tiny 2)")
    p.add_argument("--find-max-batch", action="store_true", help="after the timed steps, try larger batch sizes until one runs out of memory")
    p.add_argument("--search", help="batch sizes for --find-max-batch and for the out-of-memory fallback "
                   "(default 8,16,24,32,48,64,96,128,192,256; tiny 2,4,8)")  # fmt: skip
    p.add_argument("--search-steps", type=int, default=2, help="steps per batch size in the search")
    p.add_argument("--time-budget-s", type=float, help="wall-clock budget of the whole run (default 540; cpu 3600)")
    p.add_argument("--out", type=Path, help="append the JSON lines here too")
    p.add_argument("--logs", type=Path, help="children's logs (default: <out dir>/stage2_logs, else <workdir>/logs)")
    p.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "stage2_bench")
    p.add_argument("--img-size", type=int, default=256)
    p.add_argument("--t5-len", type=int, default=256)
    p.add_argument("--samples", type=int, help="Stage 1 dataset size (default 256, at least the largest batch; tiny 32)")
    p.add_argument("--tar-samples", type=int, help="samples in the CC12M-format tars (default 512; tiny 32)")
    p.add_argument("--ours-workers", type=int, default=4, help="Stage 2 loader workers (configs/flux_schnell.toml: 4)")
    p.add_argument("--online-workers", type=int, default=0, help="stock loader workers (TorchTitan default: 0)")
    p.add_argument("--prefetch", type=int, default=4, help="prefetch_factor where a loader has workers")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--own-tars", action="store_true", help="use the bench's own tar generator, not shared.assets")
    p.add_argument("--report", type=Path, nargs="+", metavar="JSONL", help="only print the summary of earlier --out files")
    p.add_argument("--fake-oom-above", type=int, default=0, help=argparse.SUPPRESS)  # CPU smoke tests: simulated OOM
    args = p.parse_args(argv)
    if args.device == "cpu":
        args.tiny = True
    tiny = args.tiny
    args.batch = args.batch or (4 if tiny else 32)
    args.warmup = args.warmup or (1 if tiny else 3)
    args.steps = math.ceil((args.steps or (2 if tiny else 9)) / args.warmup) * args.warmup
    args.search = sorted({int(x) for x in (args.search or ("2,4,8" if tiny else "8,16,24,32,48,64,96,128,192,256")).split(",")})
    args.samples = max(args.samples or (32 if tiny else 256), max(args.search + [args.batch]))
    args.tar_samples = args.tar_samples or (32 if tiny else 512)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        return report(args.report)
    t0 = time.monotonic()
    device = probe_device(args.device)
    budget = args.time_budget_s or (540.0 if device.kind == "cuda" else 3600.0)
    deadline = t0 + budget
    if device.kind == "cuda":
        common.device_name = lambda: device.name  # bench.common would ask CUDA (a context in this process)
    from torchtitan.tools.utils import get_peak_flops

    peak_flops = get_peak_flops(device.name)
    depth, single, why = choose_depth(args.depth, device, args.variants, args.tiny)
    model = build_model(depth, single, args.tiny, args.img_size, args.t5_len)
    log(f"{device.name} ({device.capacity_gib or 0:.0f} GiB); model {model.label} ({why}): {model.nparams / 1e9:.3f} B params, "
        f"{model.flops_per_sample / 1e12:.3f} TFLOP/sample (sequence {model.sequence}); peak {peak_flops:.3e} FLOP/s")  # fmt: skip
    if device.kind == "cuda" and not args.tiny and (depth, single) != (8, 16):
        log("NOTE: not the issue's 8x16 model (it does not fit this GPU with both trainers' fp32 master weights + AdamW); "
            "run on an H200 (--depth 8x16) for that figure")  # fmt: skip

    workdir = args.workdir.resolve()
    logs = args.logs or (args.out.resolve().parent / "stage2_logs" if args.out else workdir / "logs")
    logs.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    inputs: dict[str, Path] = {}
    if any(VARIANTS[v]["trainer"] == "online" for v in args.variants):
        per_shard = max(1, math.ceil(args.tar_samples / 4))
        inputs["tars"], captions = prepare_tars(data, 4, per_shard, args.own_tars)
        inputs["tokenizer"] = write_tokenizer(workdir / "assets" / "tokenizer", captions)
        inputs["t5"], inputs["clip"] = write_encoder_configs(workdir / "assets" / ("tiny" if args.tiny else "real"), args.tiny)
    if any(VARIANTS[v]["trainer"] == "ours" for v in args.variants):
        stores = 4
        inputs["dataset"] = prepare_dataset(data, model, stores, math.ceil(args.samples / stores))

    fig = Figures(args.out, {
        "model": model.label, "flavor": model.online_name, "params": model.nparams, "flops_per_sample": model.flops_per_sample,
        "depth_choice": why, "peak_flops": peak_flops, "gpu_capacity_gib": device.capacity_gib,
        "img_size": args.img_size, "t5_len": args.t5_len,
    })  # fmt: skip
    estimates = GPU_ESTIMATE_S if device.kind == "cuda" else CPU_ESTIMATE_S
    summaries: dict[str, dict] = {}
    for i, variant in enumerate(args.variants):
        later = sum(estimates[v] for v in args.variants[i + 1 :])
        remaining = deadline - time.monotonic()
        if remaining < 0.5 * estimates[variant]:
            summaries[variant] = {"status": "skipped", "reason": f"time budget ({remaining:.0f} s left)"}
            emit_variant(fig, variant, summaries[variant], args)
            continue
        # Searches may use what is not reserved for the later variants' timing; a child that hangs is
        # stopped at 2.5x its estimate (or, when searching, soon after its search deadline).
        search_room = max(0.0, remaining - later - 10)
        search_deadline = time.time() + search_room
        cap = max(2.5 * estimates[variant], search_room + 60 if args.find_max_batch else 0.0)
        hard_timeout = min(cap, max(0.5 * estimates[variant], remaining - 0.5 * later)) - 5
        outcome = run_variant(variant, args, model, device, inputs, workdir, logs, search_deadline, hard_timeout)
        summaries[variant] = summarize(outcome, model, peak_flops)
        emit_variant(fig, variant, summaries[variant], args)
    lines = emit_comparison(fig, summaries)
    title = table_title(model.label, model.nparams, model.flops_per_sample, device.name, peak_flops)
    print("\n" + human_table(summaries, title), file=sys.stderr)
    print("\n".join(lines), file=sys.stderr)
    print(f"  total wall time {time.monotonic() - t0:.0f} s; logs in {logs}", file=sys.stderr, flush=True)
    return 0 if all(s["status"] == "ok" for s in summaries.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
