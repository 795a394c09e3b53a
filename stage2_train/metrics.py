"""TorchTitan's metrics (stdout, TensorBoard, wandb), counting training samples instead of tokens.

The data loader's labels are sample indices, so TorchTitan's token counters count samples: its
``tps`` is samples/s per GPU, and with the flavors' FLOPs per sample its ``tflops`` and ``mfu`` are
real. It already records the share of step time spent waiting for data
(``time_metrics/data_loading(%)``) and peak memory; this adds samples/s under its own name and one
stdout line with the figures a Stage 2 run is judged by.
"""

from __future__ import annotations

import time
from typing import Any

from torchtitan.components.metrics import MetricsProcessor
from torchtitan.config import JobConfig
from torchtitan.distributed import ParallelDims
from torchtitan.protocols import BaseModelArgs
from torchtitan.tools.logging import logger


class SampleMetricsProcessor(MetricsProcessor):
    def log(
        self,
        step: int,
        global_avg_loss: float,
        global_max_loss: float,
        grad_norm: float,
        extra_metrics: dict[str, Any] | None = None,
    ) -> None:
        elapsed = time.perf_counter() - self.time_last_log
        samples_per_second = self.ntokens_since_last_log / elapsed
        data_wait = sum(self.data_loading_times) / elapsed
        mfu = 100 * self.num_flops_per_token * samples_per_second / self.gpu_peak_flops
        extra = {**(extra_metrics or {}), "throughput/samples_per_second_per_gpu": samples_per_second}
        super().log(step, global_avg_loss, global_max_loss, grad_norm, extra_metrics=extra)
        logger.info(
            f"step: {step:2}  samples/s/GPU: {samples_per_second:.2f}  MFU: {mfu:.2f}%  "
            f"data wait: {100 * data_wait:.1f}% of step time"
        )


def build_sample_metrics_processor(
    job_config: JobConfig, parallel_dims: ParallelDims, model_args: BaseModelArgs | None = None, tag: str | None = None
) -> SampleMetricsProcessor:
    return SampleMetricsProcessor(job_config, parallel_dims, tag)
