"""Stage 2: train Flux with TorchTitan on a dataset Stage 1 encoded once (no T5, CLIP or AE weights loaded).

Reads as TorchTitan does, one module per job:

    flavors / flops      the model shapes (TorchTitan's FluxModel) and their training FLOPs per sample
    parallelize          AC, per-block compile, FSDP2/HSDP (replicas synchronised at shard degree 1)
    identity_check       refuse a dataset made for another model or setting
    sampler / data       disjoint, shuffled, resumable sample order per rank; Zarr reads; batches
    elastic_loader       the order's checkpoint: global position + pinned stores, any world size resumes it
    dataset_extent       a new run on a dataset Stage 1 has not finished is refused
    step                 stored moments/encodings -> TorchTitan's flow-matching inputs, same draws
    trainer              FluxTrainer minus its encoders
    stop_request         stop at a step all ranks agree on (time limit, preemption), checkpointed
    liveness             per-rank heartbeat and exit record (with the traceback in the rank's own log)
    slurm_start          train.sbatch's launcher helper: history line, failure budget, one line per end
      failure_budget       who ended a start; requeue or stop (budget, a repeated failure, no progress)
      history              <dump_folder>/history.jsonl, ``python -m stage2_train.history DUMP_FOLDER``
    validator            validation loss and sample images on TorchTitan's validation schedule:
      validation_loss      loss on a held-out Stage 1 dataset, stratified timesteps, fixed draws
      prompt_set / sampling / images   stored prompt encodings -> denoise -> AE decoder -> PNG grid
    metrics / ledger     samples/s, MFU, data wait; per-step record of samples and loss
    train_spec / launch  registration and the ``python -m stage2_train`` entry (CPU/gloo without CUDA)
    preflight            ``python -m stage2_train.preflight``: GPUs, network, dataset and checkpoint space
"""
