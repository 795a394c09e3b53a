"""Config sections Stage 2 adds to TorchTitan's (``[job] custom_config_module = "stage2_train.job_config"``).

``[training]``, ``[encoder]`` and ``[validation]`` keep the names of TorchTitan's Flux config, so a
TorchTitan Flux user's TOML keys mean the same here; ``[stage2]`` holds what only a precomputed dataset has, and
``[validation] prompts_path, image_freq, seed`` what only stored prompt encodings need. Everything else
(``[training] dataset_path, local_batch_size, steps``, ``[training.dataloader]``, ``[validation] enable,
freq, steps, local_batch_size, dataset_path``, ``[validation.dataloader]``, ``[parallelism]``,
``[activation_checkpoint]``, ``[compile]``, ``[checkpoint]``, ``[metrics]`` but its ``jsonl_file``) is
TorchTitan's own.
"""


from dataclasses import dataclass, field
from typing import Literal


@dataclass
class Training:
    classifier_free_guidance_prob: float = 0.0
    """Probability of replacing each prompt encoding (T5 and CLIP independently) by the empty
    prompt's, as TorchTitan's Flux dataset does with tokens. 0.447 gives 20 % unconditional steps."""
    img_size: int = 256
    """Image side the dataset was encoded at; must equal the dataset identity's."""


@dataclass
class Encoder:
    max_t5_encoding_len: int = 256
    """T5 positions per caption; must equal the dataset identity's ``t5_max_length``."""
    autoencoder_path: str = ""
    """AE for decoding sample images: an assets directory or its ``ae.safetensors``. Empty: the assets
    directory the training dataset recorded. Either way it must be the AE the dataset was encoded with."""


@dataclass
class Validation:
    """Added to TorchTitan's ``[validation]``: ``enable`` builds Stage 2's validator, which computes the
    loss on ``dataset_path`` (a held-out Stage 1 dataset) every ``freq`` steps and draws images for
    ``prompts_path`` every ``image_freq`` steps; either path may be empty (that part is off)."""

    prompts_path: str = ""
    """A prompt set (``python -m stage1_encode.prompts``) to draw sample images for."""
    image_freq: int = 500
    """Draw sample images every this many steps (and at step 1, as TorchTitan validates)."""
    save_img_count: int = 8
    """How many prompts of the prompt set to draw, the first ones (-1: all)."""
    save_img_folder: str = "samples"
    """Image grids go to ``<job.dump_folder>/<save_img_folder>/step-NNNNNN.png``."""
    denoising_steps: int = 4
    """Euler steps per image (schnell samples in 4)."""
    enable_classifier_free_guidance: bool = True
    """Guide with the prompt set's empty-prompt encodings (trained by ``classifier_free_guidance_prob``)."""
    classifier_free_guidance_scale: float = 5.0
    all_timesteps: bool = False
    """Loss of every validation sample at all 8 stratified timesteps (8x the work) instead of one,
    round robin."""
    seed: int = 0
    """Seeds the validation draws (ε, noise) and the images' starting noise; independent of
    ``stage2.seed``, so runs with other training seeds stay comparable."""


@dataclass
class Stage2:
    seed: int = 0
    """Seeds the sample order of every epoch and each step's draws (AE sample, noise, timesteps,
    prompt dropout), which are a function of (seed, step, data-parallel rank): a resumed run
    draws exactly what an uninterrupted one would."""
    on_corrupt: Literal["fail", "skip"] = "fail"
    """A sample that fails its checksum or whose shard file is missing: ``fail`` stops training with
    a message naming the store; ``skip`` leaves it out of its batch with a warning."""
    sample_ledger: bool = False
    """Append each micro-batch's sample indices and local loss to ``<dump_folder>/ledger/rank_<r>.jsonl``
    (answers "what did step N train on?" after the run)."""
    allow_incomplete_dataset: bool = False
    """Start a new run on a dataset Stage 1 has not finished (tasks still running, or stores missing
    against its input list), training on the stores committed now. Off: such a start is refused with
    the missing tars named. A resume always trains on the stores its checkpoint pinned."""
    dataset_refresh: bool = False
    """On resume, train on the stores committed now instead of those the checkpoint pinned; when they
    differ, the rest of the checkpoint's epoch is skipped and the next epoch covers all of them."""
    stop_file: str = ""
    """A file whose appearance asks the run to stop (``train.sbatch`` writes it on SIGUSR1/SIGTERM, with
    the signal's name inside). Every rank looks for it at every step boundary and all agree through
    one all-reduce; they then checkpoint that step, write ``<stop_file>.stopped`` (that step and the
    step the start resumed at) and exit 0.
    Empty: only SIGTERM to the training processes asks for a stop."""
    max_failures: int = 3
    """Failures (a rank died or hung, a node was lost) one ``slurm/train.sbatch`` job recovers from by
    requeueing itself and resuming from the newest checkpoint; the next one ends the job. Counted per
    job from ``<dump_folder>/history.jsonl`` (``python -m stage2_train.history DUMP_FOLDER``). A failure
    that repeats at the same step with the same cause ends the job at once."""
    liveness_interval_seconds: float = 5.0
    """Every rank rewrites ``<dump_folder>/liveness/rank_<r>.json`` this often, so that the launcher can
    name a rank that hung (its heartbeat stops); keep it well below ``[comm] train_timeout_seconds``."""
    fsdp_forward_prefetch: int = 1
    """FSDP2 explicit forward prefetch: each transformer block starts the all-gather of the next n
    blocks' parameters. 0 leaves FSDP2's implicit prefetch. Default not measured on GPU here."""
    fsdp_backward_prefetch: int = 1
    """FSDP2 explicit backward prefetch: each block's backward starts the all-gather of the n blocks
    before it. 0 leaves FSDP2's implicit prefetch (one block). Default not measured on GPU here."""
    fsdp_reshard_after_forward: bool = True
    """Free each block's gathered parameters after its forward (re-gather for backward): less memory,
    one more all-gather per block. False keeps them until backward (ZeRO-2-like)."""
    text_bucket: int = 64
    """Compact-text datasets (``Identity.text_mode``) only: each batch's T5 is cut to the smallest multiple
    of this (at most the dataset's T5 length) holding its longest caption; the padded positions are
    masked out of attention. Few lengths keep the compiled block graphs few; exact datasets ignore it."""
    gpu_memory_gib: float = 0.0
    """GPU memory preflight checks the step's planned peak against where it sees no GPU (a login
    node): GiB per GPU. 0: that of the GPU preflight runs on, none there: not checked. Training ignores it."""


@dataclass
class Metrics:
    jsonl_file: str = ""
    """Also append every logged record (TorchTitan's names: loss, step time, data-loading share, peak
    memory, MFU; plus samples/s) as one JSON line to ``<job.dump_folder>/<jsonl_file>``, first rank
    only; empty: off. Scripts (the Stage 2 benchmark) read it instead of parsing the console."""


@dataclass
class JobConfig:
    training: Training = field(default_factory=Training)
    encoder: Encoder = field(default_factory=Encoder)
    validation: Validation = field(default_factory=Validation)
    stage2: Stage2 = field(default_factory=Stage2)
    metrics: Metrics = field(default_factory=Metrics)
