"""Checkpoint cost on one GPU: TorchTitan's ``[checkpoint] async_mode`` ("disabled", "async",
"async_with_pinned_mem") under Stage 2's own trainer (``python -m stage2_train`` via torchrun, as
``bench.stage2`` runs it: ``configs/flux_schnell.toml``, blocks compiled, no activation checkpointing).

    python -m bench.checkpoint --modes disabled --out R.jsonl            # one mode per run (~5 min on a GPU)
    python -m bench.checkpoint --device cpu --compile-backend eager --interval 3 --saves 2 --batch 2   # CPU smoke

Each mode is one run: ``--saves`` interval saves every ``--interval`` steps, then a stop request the
way ``slurm/train.sbatch`` makes one on SIGUSR1 (it writes ``stage2.stop_file``) half an interval after
the last save, once that save is on disk. Figures, one JSON line each (benchmark ``stage2_checkpoint``):

    <mode>.interval_save_stall   step time of the step after a save minus the median step time (the
                                 save of step k is timed into step k + 1's record), median over the
                                 saves after the first; every stall and each interval's summed excess
    <mode>.stop_to_complete      stop file written -> the trainer's acknowledgement, which follows a
                                 complete checkpoint on disk (includes finishing the current step);
                                 its bytes, the synchronous stop save's own time and write GB/s

Default model ``flux-schnell-4x8`` (2.5 B parameters: fp32 weights + AdamW ~30 GB): the 8 + 16-block
one's 60 GB does not fit twice on a 64 GiB disk. Only one checkpoint is kept on disk at a time: the
benchmark deletes each interval checkpoint once complete, and the stop checkpoint after measuring it
(``--keep-checkpoints`` keeps it). Each rank's peak host memory (asynchronous staging holds a copy of
the state in host RAM) comes from the trainer's ``ranks/rank-0.jsonl``. ``async_with_pinned_mem``
needs CUDA (TorchTitan's pinned staging copies non-blocking); on CPU it is recorded as an error.
"""
