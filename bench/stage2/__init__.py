"""Stage 2 side by side on one GPU: TorchTitan's online Flux trainer against ``python -m stage2_train``.

    python -m bench.stage2 timed --variants bf16,fp8 --batch 32 --steps 300 --out R.jsonl   # + loss curves
    python -m bench.stage2 timed --variants online --batch 32 --steps 12 --out R.jsonl
    python -m bench.stage2 max-batch --variants bf16,fp8 --out R.jsonl                     # largest batch, timed
    python -m bench.stage2 report R.jsonl [--out R.jsonl]   # table, speed-ups, FP8 fidelity, targets
    python -m bench.stage2 timed --device cpu --variants online,bf16 --steps 3              # CPU smoke
    python -m bench.stage2 timed --image-size 512 --variants online,bf16 --batch 16 ...    # 512 px (default 256)
    python -m bench.stage2 timed --variants bf16,bf16_compact --mean-t5-tokens 32 ...      # compact text vs exact

Every run is the trainer's own entry point under torchrun, one process per (variant, batch): Stage 2 with
``configs/flux_schnell.toml`` plus command-line overrides, the stock trainer (``bench.stage2.online``)
with ``bench/stage2/online.toml``. Figures come from the trainers' own metrics records (Stage 2's
``[metrics] jsonl_file``), FLOPs per sample from ``stage2_train.model.flops``. Modules: ``variants`` (what
each variant sets), ``inputs`` (tars, tokenizer, encoder configs, a Stage 1 dataset), ``runs`` (one
torchrun), ``figures`` (records to figures), ``cli`` (the commands). See ``bench/results/`` for figures.

``--image-size N`` runs both trainers at ``training.img_size`` N: Stage 2 on a synthetic dataset whose
identity says N, the online trainer on tars with every image side scaled by ceil(N / 256) (its loader
skips images smaller than N). Every figure records ``image_size``; ``report`` sums up each size apart.
"""
