"""The CPU half of Stage 1: decode, crop and tokenize chunks of samples in worker processes.

Results come back as futures in submission order, so the encode order — and with it every batch's
composition — depends only on the tar's content, never on which worker finished first.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from stage1_encode.captions import TokenizerFactory, caption_text, tokenize
from stage1_encode.decode import Cropped, ImagePolicy, decode_image
from stage1_encode.skips import Skip, SkipReason
from stage1_encode.tars import RawSample


@dataclass
class Prepared:
    """A sample ready for the encoders."""

    key: str
    caption: str
    image: Cropped
    t5_tokens: np.ndarray
    clip_tokens: np.ndarray


_tokenizers: tuple[Any, Any] | None = None


def init_worker(factory: TokenizerFactory, started: Any = None) -> None:
    """Process initializer: each worker loads its own tokenizers once, then says so on ``started``."""
    global _tokenizers
    _tokenizers = factory()
    if started is not None:
        started.put(os.getpid())


def prepare_chunk(samples: list[RawSample], policy: ImagePolicy, t5_max_length: int) -> list[Prepared | Skip]:
    """Decode and tokenize ``samples``; one result per sample, in order."""
    assert _tokenizers is not None, "init_worker was not called in this process"
    decoded = [_decode(raw, policy) for raw in samples]
    valid = [d for d in decoded if not isinstance(d, Skip)]
    if not valid:
        return decoded
    t5, clip = tokenize(_tokenizers, [caption for _, caption, _ in valid], t5_max_length)
    tokens = iter(zip(t5, clip))
    return [d if isinstance(d, Skip) else Prepared(*d, *next(tokens)) for d in decoded]


def _decode(raw: RawSample, policy: ImagePolicy) -> tuple[str, str, Cropped] | Skip:
    caption = caption_text(raw.members.get("txt"))
    if isinstance(caption, SkipReason):
        return Skip(raw.key, caption)
    images = raw.images()
    if not images:
        return Skip(raw.key, SkipReason.MISSING_IMAGE)
    if len(images) > 1:
        return Skip(raw.key, SkipReason.SEVERAL_IMAGES)
    cropped = decode_image(images[0], raw.key, policy)
    if isinstance(cropped, SkipReason):
        return Skip(raw.key, cropped)
    return raw.key, caption, cropped


def _started() -> None:
    """A no-op job."""


class Workers:
    """``prepare_chunk`` on ``count`` spawned processes, or in the calling thread when ``count`` is 0.

    Spawned, not forked: the parent holds CUDA state and threads, which a fork would copy half-made.
    All of them start at once, while the encoders load (``wait_ready``), not at the first tar.
    """

    def __init__(self, count: int, factory: TokenizerFactory, policy: ImagePolicy, t5_max_length: int) -> None:
        self._args = (policy, t5_max_length)
        self._pool: ProcessPoolExecutor | None = None
        self._count = count
        if count:
            context = multiprocessing.get_context("spawn")
            self._started = context.Queue()
            self._pool = ProcessPoolExecutor(count, mp_context=context, initializer=init_worker, initargs=(factory, self._started))
            for _ in range(count):  # a pool spawns a process per job submitted while none is idle
                self._pool.submit(_started)
        else:
            init_worker(factory)

    def wait_ready(self) -> None:
        """Wait until every worker has loaded its tokenizers; a worker that failed to start raises here."""
        ready = 0
        while ready < self._count:
            try:
                self._started.get(timeout=0.5)
                ready += 1
            except queue.Empty:
                self.submit([]).result()  # a broken pool (a worker died starting) raises BrokenProcessPool

    def submit(self, chunk: list[RawSample]) -> "Future[list[Prepared | Skip]]":
        if self._pool is not None:
            return self._pool.submit(prepare_chunk, chunk, *self._args)
        future: Future[list[Prepared | Skip]] = Future()
        future.set_result(prepare_chunk(chunk, *self._args))
        return future

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._started.close()
