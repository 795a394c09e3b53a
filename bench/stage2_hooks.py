"""What ``bench/stage2_train.py`` adds inside a trainer process: a metrics file and a plan of phases.

Both trainers are driven through their real entry points; this module is imported into them (stock
Flux: by ``bench/stage2_online.py``; Stage 2: through TorchTitan's own ``--experimental.custom_import
bench.stage2_hooks``) and changes no math. It

* appends every metrics record the trainer logs (TorchTitan's ``MetricsProcessor`` → ``LoggerContainer.log``:
  step time, data-loading share, peak memory, and whatever the trainer adds) to ``$BENCH_METRICS`` as JSON
  lines, tagged with the phase and batch size;
* runs the plan in ``$BENCH_PLAN``: a **timing phase** — the trainer's own ``train()`` loop for
  ``warmup + measure`` steps at the bench's batch size, logging every ``warmup`` steps so the warm-up
  (compilation) falls in its own records — then, when asked, a **max-batch search**: two or three steps
  at each larger batch size from a short list (smaller ones when the timing batch ran out of memory),
  each with a fresh data loader from the trainer's own ``build_dataloader_fn``, stopping at the first
  out-of-memory error. If the timing batch itself runs out of memory, the largest smaller size that fits
  gets the timing phase instead, so a variant still has a measured throughput;
* adds benchmark flavors to Stage 2's ``FLAVORS`` (``$BENCH_OURS_FLAVOR``) — the stock trainer's are
  added by ``stage2_online``.

``$BENCH_FAKE_OOM_ABOVE`` (CPU smoke tests only) raises a simulated out-of-memory error after the
backward pass of any step with more samples than that, to exercise the out-of-memory paths without a GPU.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import math
import os
import time
from typing import Any

import torch
from torchtitan.components import metrics as tt_metrics
from torchtitan.tools.logging import logger
from torchtitan.train import Trainer

_PLAN: dict[str, Any] = json.loads(os.environ.get("BENCH_PLAN", "{}"))
_METRICS_PATH = os.environ.get("BENCH_METRICS")
_PHASE: dict[str, Any] = {"phase": "init", "batch": None}
_PEAK = {"active_gib": 0.0, "reserved_gib": 0.0}


def record(kind: str, **fields: Any) -> None:
    """Append one JSON line to the metrics file (rank 0 only; flushed: a killed run keeps its records)."""
    if not _METRICS_PATH or int(os.environ.get("RANK", "0")) != 0:
        return
    line = {"kind": kind, "time": time.time(), **_PHASE, **fields}
    with open(_METRICS_PATH, "a") as f:
        f.write(json.dumps(line, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return str(value)


# --- metrics sink and peak memory ------------------------------------------------------------------

_original_reset_peak = tt_metrics.DeviceMemoryMonitor.reset_peak_stats


def _recording(original_log):
    """``MetricsProcessor.log`` hands its record to ``self.logger.log``: a ``LoggerContainer`` when
    TensorBoard or W&B is on, else a bare ``BaseLogger`` — both are wrapped (one record per log either way)."""

    def log(self, metrics: dict[str, Any], step: int) -> None:
        record("metrics", step=step, metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        original_log(self, metrics, step)

    return log


def _reset_peak_stats(self) -> None:
    """TorchTitan resets the peak counters at every log; keep the phase's maximum across those resets."""
    _fold_peak(self)
    _original_reset_peak(self)


def _fold_peak(monitor: tt_metrics.DeviceMemoryMonitor) -> None:
    stats = monitor.get_peak_stats()
    _PEAK["active_gib"] = max(_PEAK["active_gib"], stats.max_active_gib)
    _PEAK["reserved_gib"] = max(_PEAK["reserved_gib"], stats.max_reserved_gib)


def _start_peak(monitor: tt_metrics.DeviceMemoryMonitor) -> None:
    _original_reset_peak(monitor)
    _PEAK.update(active_gib=0.0, reserved_gib=0.0)


def _phase_peak(monitor: tt_metrics.DeviceMemoryMonitor) -> dict[str, float]:
    _fold_peak(monitor)
    return {"peak_active_gib": round(_PEAK["active_gib"], 3), "peak_reserved_gib": round(_PEAK["reserved_gib"], 3)}


# --- the plan --------------------------------------------------------------------------------------

_original_train = Trainer.train


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _free_after_oom(trainer: Trainer) -> None:
    """Drop what a failed step left behind (gradients, cached blocks) so the process can go on."""
    trainer.optimizers.zero_grad(set_to_none=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def _dp_degree_and_rank(trainer: Trainer) -> tuple[int, int]:
    """As ``Trainer.__init__`` computes them for the data loader."""
    if trainer.parallel_dims.dp_enabled:
        mesh = trainer.parallel_dims.get_mesh("batch")
        return mesh.size(), mesh.get_local_rank()
    return 1, 0


def _use_batch_size(trainer: Trainer, batch: int) -> None:
    """A fresh loader from the trainer's own builder, at another local batch size."""
    config = copy.deepcopy(trainer.job_config)
    config.training.local_batch_size = batch
    trainer.job_config.training.local_batch_size = batch
    degree, rank = _dp_degree_and_rank(trainer)
    _close_loader(trainer.dataloader)
    trainer.dataloader = trainer.train_spec.build_dataloader_fn(
        dp_world_size=degree, dp_rank=rank, tokenizer=trainer.tokenizer, job_config=config
    )
    gc.collect()


def _close_loader(loader: Any) -> None:
    """Stop a replaced loader's persistent workers and pinning thread (the checkpointer still holds
    the loader object, which would keep them — and their prefetched batches — alive)."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is None or not hasattr(iterator, "_shutdown_workers"):  # none cached, or no workers
        return
    try:
        iterator._shutdown_workers()
    except Exception as exc:  # noqa: BLE001 — private API; leaking idle workers is not fatal
        logger.warning(f"[bench] could not stop the previous loader's workers: {exc}")
    loader._iterator = None


def _reset_interval(trainer: Trainer) -> None:
    """Start the metrics interval now, so a phase's first record does not include loader set-up."""
    mp = trainer.metrics_processor
    mp.ntokens_since_last_log = 0
    mp.data_loading_times.clear()
    mp.time_last_log = time.perf_counter()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timing_phase(trainer: Trainer, batch: int, warmup: int, measure: int, first: bool) -> dict[str, Any]:
    """``warmup + measure`` steps of the trainer's own loop; logs land every ``warmup`` steps."""
    if not first:
        _use_batch_size(trainer, batch)
        # Align the step counter so logs (step % log_freq == 0) split warm-up and measured steps exactly.
        trainer.step = math.ceil(trainer.step / warmup) * warmup
    trainer.job_config.metrics.log_freq = warmup
    start_step = trainer.step
    trainer.should_continue_training = lambda: trainer.step < start_step + warmup + measure
    _PHASE.update(phase="timing", batch=batch, phase_start_step=start_step)
    monitor = trainer.metrics_processor.device_memory_monitor
    _start_peak(monitor)
    _reset_interval(trainer)
    record("phase_start", warmup=warmup, measure=measure)
    started = time.perf_counter()
    error = None
    try:
        _original_train(trainer)
    except Exception as exc:  # noqa: BLE001 — only out-of-memory is handled, everything else re-raised
        if not _is_oom(exc):
            raise
        error = str(exc)[:500]
    if error is not None:  # outside the except clause: the traceback (and its tensors) is gone
        peak = _phase_peak(monitor)
        logger.warning(f"[bench] batch {batch}: out of memory in the timing phase ({error[:200]})")
        _free_after_oom(trainer)
        record("phase", status="oom", steps_done=trainer.step - start_step, error=error, **peak)
        return {"status": "oom"}
    _sync()
    peak = _phase_peak(monitor)
    record("phase", status="ok", steps_done=trainer.step - start_step, wall_s=time.perf_counter() - started, **peak)
    return {"status": "ok"}


def _search_phase(trainer: Trainer, batch: int, steps: int) -> str:
    """``steps`` training steps at ``batch``, each logged; "ok" or "oom"."""
    _PHASE.update(phase="search", batch=batch, phase_start_step=trainer.step)
    trainer.job_config.metrics.log_freq = 1
    monitor = trainer.metrics_processor.device_memory_monitor
    started = time.perf_counter()
    error = None
    try:
        _use_batch_size(trainer, batch)
        _start_peak(monitor)
        _reset_interval(trainer)
        iterator = trainer.batch_generator(trainer.dataloader)
        for _ in range(steps):
            trainer.step += 1
            trainer.gc_handler.run(trainer.step)
            trainer.train_step(iterator)
        _sync()
    except Exception as exc:  # noqa: BLE001
        if not _is_oom(exc):
            raise
        error = str(exc)[:500]
    if error is not None:
        peak = _phase_peak(monitor)
        logger.warning(f"[bench] batch {batch}: out of memory ({error[:200]})")
        _free_after_oom(trainer)
        record("phase", status="oom", error=error, **peak)
        return "oom"
    record("phase", status="ok", steps_done=steps, wall_s=time.perf_counter() - started, **_phase_peak(monitor))
    return "ok"


def _time_left(deadline: float | None, needed_s: float) -> bool:
    return deadline is None or time.time() + needed_s < deadline


def _run_plan(self: Trainer) -> None:
    """Replaces ``Trainer.train`` (see the module docstring); without a plan, the trainer's own loop."""
    plan = _PLAN
    if not plan:
        return _original_train(self)
    batch, warmup, measure = plan["batch"], plan["warmup"], plan["measure"]
    sizes = sorted(set(plan.get("search", [])))
    search_steps, deadline = plan.get("search_steps", 2), plan.get("search_deadline")
    compile_allowance = plan.get("recompile_allowance_s", 0.0)
    record("plan", plan=plan)
    _install_fake_oom(self)

    timed = _timing_phase(self, batch, warmup, measure, first=True)["status"] == "ok"
    smallest_oom = None if timed else batch
    if not timed:
        # Fall back to the largest smaller size that fits, and time it there (whatever the search
        # deadline: it is this variant's only throughput; the bench stops the process if it must).
        for smaller in sorted((b for b in sizes if b < batch), reverse=True):
            if _timing_phase(self, smaller, warmup, measure, first=False)["status"] == "ok":
                timed = True
                batch = smaller
                break
            smallest_oom = smaller
        if not timed:
            record("search_done", max_batch=None, complete=True)
            return
    if not plan.get("find_max_batch"):
        return
    largest, last_wall = batch, None
    for candidate in (b for b in sizes if b > batch and (smallest_oom is None or b < smallest_oom)):
        needed = (compile_allowance if last_wall is None else 0.0) + (last_wall or 0.0) * candidate / largest
        if not _time_left(deadline, needed):
            record("search_cut", reason="time budget", next_batch=candidate, max_batch=largest)
            return
        started = time.perf_counter()
        if _search_phase(self, candidate, search_steps) == "oom":
            record("search_done", max_batch=largest, oom_at=candidate, complete=True)
            return
        last_wall, largest = time.perf_counter() - started, candidate
    if smallest_oom is not None:
        record("search_done", max_batch=largest, oom_at=smallest_oom, complete=True)
    else:
        record("search_done", max_batch=largest, oom_at=None, complete=False, reason="largest size tried fits")


# --- Stage 2 flavors and the simulated out-of-memory error -----------------------------------------


def _add_ours_flavor() -> None:
    spec = os.environ.get("BENCH_OURS_FLAVOR")
    if not spec:
        return
    spec = json.loads(spec)
    from stage2_train.flavors import FLAVORS  # the dict Stage 2's TrainSpec and data loader read

    if spec["name"] not in FLAVORS:
        FLAVORS[spec["name"]] = dataclasses.replace(
            FLAVORS[spec["base"]], depth=spec["depth"], depth_single_blocks=spec["single"]
        )


def _install_fake_oom(trainer: Trainer) -> None:
    limit = os.environ.get("BENCH_FAKE_OOM_ABOVE")
    if not limit:
        return
    limit, step = int(limit), trainer.forward_backward_step

    def forward_backward_step(*, input_dict, labels, **kwargs):
        loss = step(input_dict=input_dict, labels=labels, **kwargs)
        if labels.shape[0] > limit:
            raise torch.OutOfMemoryError(f"simulated out of memory: batch {labels.shape[0]} > {limit}")
        return loss

    trainer.forward_backward_step = forward_backward_step


def install() -> None:
    if getattr(Trainer, "_bench_installed", False):
        return
    tt_metrics.LoggerContainer.log = _recording(tt_metrics.LoggerContainer.log)
    tt_metrics.BaseLogger.log = _recording(tt_metrics.BaseLogger.log)
    tt_metrics.DeviceMemoryMonitor.reset_peak_stats = _reset_peak_stats
    Trainer.train = _run_plan
    Trainer._bench_installed = True
    _add_ours_flavor()


install()
