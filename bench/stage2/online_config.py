"""The stock Flux trainer's config (``torchtitan.models.flux.job_config``) plus Stage 2's
``[metrics] jsonl_file``, so both trainers write the same metrics records."""

from dataclasses import dataclass, field

from torchtitan.models.flux.job_config import JobConfig as FluxJobConfig

from stage2_train.job_config import Metrics


@dataclass
class JobConfig(FluxJobConfig):
    metrics: Metrics = field(default_factory=Metrics)
