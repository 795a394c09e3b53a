"""Stage 2: train Flux with TorchTitan on a dataset Stage 1 encoded once (no T5, CLIP or AE weights loaded).

Laid out as TorchTitan's flux folder is: the entry, the trainer and the step at the top, a room per concern.

    __main__ / launch    ``python -m stage2_train`` under torchrun (CPU/gloo without CUDA; one process without)
    torchrun             ``python -m stage2_train.torchrun``: torchrun ending a failure with its summary only,
                         recording a rank it saw killed by a signal
    train_spec           the TrainSpec: model, parallelize, data loader, metrics, validator
    trainer              FluxTrainer minus its encoders
    step                 stored moments/encodings -> TorchTitan's flow-matching inputs, same draws
    job_config           the project's [stage2] knobs
    slurm_start          train.sbatch's launcher helper: a start's history line, failure budget, one line
                         on how it ended and what happens next (requeue or stop)
    history              <dump_folder>/history.jsonl, ``python -m stage2_train.history DUMP_FOLDER``
    preflight            ``python -m stage2_train.preflight``: GPUs, network, dataset and checkpoint space
    refusals             requests a run cannot carry out, one line each: preflight and the trainer ask them

    model/       flavors (shapes) · flops (training FLOPs per sample) · float8 (the FP8 converter) ·
                 masked_attention (compact text: padded T5 keys masked in TorchTitan's blocks)
    infra/       parallelize (AC, per-block compile, FSDP2/HSDP) · device (CPU without CUDA) ·
                 stop_request (agreed stop on a signal) · accumulation (micro-batches per step) ·
                 liveness (per-rank heartbeat, exit record) · failure_budget (who ended a start; requeue
                 or stop: budget, a repeated failure, no progress) · slurm_job (scontrol's view of the job;
                 preflight's time-limit row)
    data/        dataset (samples, collate, empty prompt) · compact_text (T5 cut per batch, its mask) ·
                 paired (ladder datasets) · sampler (global, elastic order) · elastic_loader (its
                 checkpointed state, pinned stores) · loader (opening a dataset, building the loader) ·
                 manifest (the stores, read on rank 0 and broadcast) · extent (refusing an unfinished
                 dataset) · identity_check · ledger (per-step record of samples and loss)
    validation/  validator · loss (held-out loss, stratified timesteps) · prompt_set / sampling / images
                 (stored prompt encodings -> denoise -> AE decoder -> PNG grid)
    monitor/     metrics (samples/s, MFU, data wait, memory) · rank_log (every rank's peak memory and
                 step time, <dump>/ranks/) · log_filter (one line per step, each warning once) · wandb_mode
    cli/         arguments (what the command takes) · help (its --help)
    plan/        ``python -m stage2_train.plan``: the run on fake tensors at its real world size; probe ·
                 step · memory · sizing · report · check (preflight's fit, from fits.json)
"""
