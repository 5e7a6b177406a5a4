"""Dask execution: an embedded LocalCluster or an existing scheduler, tasks that write their own outputs.

- `open_client(workers=N)` starts a LocalCluster of N single-threaded worker
  processes; each onnxruntime session gets cores // N intra-op threads so the
  workers do not oversubscribe the machine. `open_client(scheduler="tcp://...")`
  connects to a running cluster (`dask scheduler` + `dask worker`, dask-jobqueue,
  Kubernetes); the workers must see the model folder and the input/output paths.
- Tasks are module-level functions of paths and small settings: a worker builds
  its sampler once (blockwise.cached_sampler, one per process) and writes its
  files / chunks itself; only small results (status, tile sums) come back.
- `DaskRunner.run` yields results as they complete (progress), retries a crashed
  task `retries` times (a worker lost mid-task has its task rescheduled by the
  scheduler), and names the file or block of a failure. A task's input error
  (ProbdaError) is returned, not raised, so it is neither retried nor logged as
  a worker traceback, and is re-raised in the client unchanged; warnings a task
  logs are shown by the client.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from pathlib import Path
from typing import Callable, Iterator

from ..errors import ConfigError, ProbdaError, RuntimeModelError

log = logging.getLogger(__name__)

RETRIES = 2


def physical_cores() -> int:
    """Cores usable by this process (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def open_client(*, workers: int = 1, scheduler: str | None = None, threads: int | None = None):
    """A dask.distributed Client: embedded LocalCluster or an existing scheduler.

    Args:
        workers: worker processes of the LocalCluster (ignored with `scheduler`).
        scheduler: address of a running scheduler, e.g. tcp://127.0.0.1:8786.
        threads: onnxruntime intra-op threads per worker (default: cores // workers
            locally, onnxruntime's default on an existing cluster).

    Yields:
        (client, threads): the client and the intra-op threads tasks should use.

    Raises:
        ConfigError: bad worker count or unreachable scheduler.
    """
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as e:
            raise ConfigError(f"--scheduler {scheduler}: cannot connect ({e}); start one with `dask scheduler` and `dask worker {scheduler}`") from None
        try:
            yield client, threads
        finally:
            client.close()
        return
    if workers < 1:
        raise ConfigError(f"--workers {workers}: need at least 1 worker")
    per_worker = threads or max(1, physical_cores() // workers)
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=logging.ERROR, worker_dashboard_address=None)
    client = Client(cluster)
    try:
        yield client, per_worker
    finally:
        client.close()
        cluster.close()


class DaskRunner:
    """Runs tasks on a Dask client, yielding (name, result) as they complete.

    Args:
        client: a distributed.Client.
        label: prefix naming the work in errors (e.g. the image path).
        retries: automatic retries of a failed task.
    """

    def __init__(self, client, *, label: str = "", retries: int = RETRIES):
        self.client, self.label, self.retries = client, label, retries

    def run(self, fn: Callable, jobs: list[tuple[str, tuple]]) -> Iterator[tuple[str, object]]:
        from distributed import as_completed

        if not jobs:
            return
        token = uuid.uuid4().hex[:8]
        names = {}
        futures = []
        for name, args in jobs:
            fut = self.client.submit(_call, fn, *args, key=f"{fn.__name__}-{name}-{token}", retries=self.retries, pure=False)
            names[fut.key] = name
            futures.append(fut)
        try:
            for fut in as_completed(futures):
                name = names[fut.key]
                if fut.status != "finished":
                    exc = fut.exception()
                    raise RuntimeModelError(f"{self.label}: {fn.__name__} of {name} failed after {self.retries} retries: "
                                            f"{type(exc).__name__}: {exc}") from None
                status, value, warnings = fut.result()
                fut.release()
                for message in warnings:
                    log.warning("%s", message)
                if status == "error":
                    raise value
                yield name, value
        finally:
            for fut in futures:
                fut.cancel()


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _call(fn: Callable, *args) -> tuple[str, object, list[str]]:
    """Run `fn(*args)` on a worker: ("ok", result, warnings) or ("error", ProbdaError, warnings)."""
    logger = logging.getLogger("probda_deploy")
    collect = _Collect()
    logger.addHandler(collect)
    try:
        return "ok", fn(*args), collect.messages
    except ProbdaError as e:
        return "error", e, collect.messages
    finally:
        logger.removeHandler(collect)


def file_task(ref, path: str, out_dir: str, fmt: str, opts):
    """Segment one file on a worker (TIFF outputs or a whole OME-Zarr) with SegmentOptions `opts`; returns a FileResult."""
    from .blockwise import cached_sampler
    from .scale import segment_path

    return segment_path(cached_sampler(ref), ref, Path(path), Path(out_dir), opts, fmt=fmt)
