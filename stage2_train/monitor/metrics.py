"""TorchTitan's metrics (stdout, TensorBoard, wandb), counting training samples instead of tokens.

The data loader's labels are sample indices, so TorchTitan's token counters count samples: its
``tps`` is samples/s per GPU, and with the flavors' FLOPs per sample its ``tflops`` and ``mfu`` are
real. It already records the share of step time spent waiting for data
(``time_metrics/data_loading(%)``) and peak memory; this adds samples/s under its own name, the peak
allocated memory, every rank's own peaks and step time (``rank_log``), one
stdout line per step with TorchTitan's figures and the ones a Stage 2 run is judged by, images (sample grids)
for TensorBoard and wandb, and, with ``[metrics] jsonl_file``, every record as a JSON line for scripts.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchtitan.components.metrics import (
    BaseLogger,
    LoggerContainer,
    MetricsProcessor,
    TensorBoardLogger,
    WandBLogger,
)
from torchtitan.config import JobConfig
from torchtitan.distributed import ParallelDims
from torchtitan.protocols import BaseModelArgs
from torchtitan.tools.logging import logger

from stage2_train.monitor.rank_log import RankLog


class SampleMetricsProcessor(MetricsProcessor):
    def __init__(self, job_config: JobConfig, parallel_dims: ParallelDims, tag: str | None = None) -> None:
        super().__init__(job_config, parallel_dims, tag)
        self.rank_log = RankLog(job_config.job.dump_folder, torch.distributed.get_rank())

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
        # Before super() resets the peaks: this rank's record, and the allocated peak the planner predicts
        # (reserved adds the allocator's cache).
        mine = self.rank_log.append(step, elapsed / self.job_config.metrics.log_freq)
        extra = {**(extra_metrics or {}), "throughput/samples_per_second_per_gpu": samples_per_second}
        if mine["peak_allocated_gib"] is not None:
            extra["memory/max_allocated(GiB)"] = mine["peak_allocated_gib"]
            memory = f"{mine['peak_allocated_gib']:5.2f}GiB allocated, {mine['peak_reserved_gib']:5.2f}GiB reserved"
        else:
            memory = f"{mine['peak_host_rss_gib']:5.2f}GiB host peak"
        super().log(step, global_avg_loss, global_max_loss, grad_norm, extra_metrics=extra)
        logger.info(  # TorchTitan's own step line is filtered out (``log_filter``): this one has its figures
            f"step: {step:2}  loss: {global_avg_loss:8.5f}  grad_norm: {grad_norm:7.4f}  "
            f"memory: {memory}  samples/s/GPU: {samples_per_second:.2f}  MFU: {mfu:.2f}%  "
            f"data wait: {100 * data_wait:.1f}% of step time"
        )

    def log_image(self, tag: str, image: Image.Image, step: int, caption: str) -> None:
        """An image to TensorBoard and wandb, where enabled (on the logging rank), at ``step``."""
        for backend in _backends(self.logger):
            if isinstance(backend, TensorBoardLogger):
                backend.writer.add_image(tag, np.asarray(image), step, dataformats="HWC")
                backend.writer.flush()
            elif isinstance(backend, WandBLogger):
                backend.wandb.log({tag: backend.wandb.Image(image, caption=caption)}, step=step)


def _backends(metric_logger: BaseLogger) -> list[BaseLogger]:
    """TorchTitan's loggers have no image API; its container keeps them in a private list."""
    return list(metric_logger._loggers) if isinstance(metric_logger, LoggerContainer) else [metric_logger]


class JsonlLogger(BaseLogger):
    """Appends each record as one JSON line (numbers only), flushed: a killed run keeps what it logged."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        record = {"step": step, **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def add_jsonl_logger(processor: MetricsProcessor, job_config: JobConfig) -> None:
    """Send ``processor``'s records to ``<dump_folder>/<metrics.jsonl_file>`` too (first rank only)."""
    jsonl_file = job_config.metrics.jsonl_file
    if not jsonl_file or torch.distributed.get_rank() != 0:
        return
    if not isinstance(processor.logger, LoggerContainer):  # a bare BaseLogger logs nothing: replace it
        processor.logger = LoggerContainer()
    processor.logger.add_logger(JsonlLogger(os.path.join(job_config.job.dump_folder, jsonl_file)))


def build_sample_metrics_processor(
    job_config: JobConfig, parallel_dims: ParallelDims, model_args: BaseModelArgs | None = None, tag: str | None = None
) -> SampleMetricsProcessor:
    processor = SampleMetricsProcessor(job_config, parallel_dims, tag)
    add_jsonl_logger(processor, job_config)
    return processor
