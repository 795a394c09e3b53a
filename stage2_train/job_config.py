"""Config sections Stage 2 adds to TorchTitan's (``[job] custom_config_module = "stage2_train.job_config"``).

``[training]`` and ``[encoder]`` keep the names of TorchTitan's Flux config, so a seed user's TOML
keys mean the same here; ``[stage2]`` holds what only a precomputed dataset has. Everything else
(``[training] dataset_path, local_batch_size, steps``, ``[training.dataloader]``,
``[parallelism]``, ``[activation_checkpoint]``, ``[compile]``, ``[checkpoint]``, ``[metrics]``) is
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
    """Append each step's sample indices and local loss to ``<dump_folder>/ledger/rank_<r>.jsonl``
    (answers "what did step N train on"; used by the resume test)."""


@dataclass
class JobConfig:
    training: Training = field(default_factory=Training)
    encoder: Encoder = field(default_factory=Encoder)
    stage2: Stage2 = field(default_factory=Stage2)
