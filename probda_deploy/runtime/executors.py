"""Executors: run `(fn, jobs)` and yield `(name, result)`; they know nothing of segmentation.

- `LocalExecutor` runs the jobs one after the other in this process.
- `DaskExecutor` runs them on a dask.distributed client: `open_executor(workers=N)`
  starts a LocalCluster of N single-threaded worker processes (each onnxruntime
  session gets cores // N intra-op threads, `executor.threads`, so the workers do
  not oversubscribe the machine); `open_executor(scheduler="tcp://...")` connects
  to a running cluster (`dask scheduler` + `dask worker`, dask-jobqueue,
  Kubernetes), whose workers must see the model folder and the data paths.
- Jobs are module-level functions of picklable arguments. `DaskExecutor.run`
  yields results as they complete (progress), retries a crashed task `retries`
  times (a worker lost mid-task has its task rescheduled by the scheduler), and
  names the job of a failure. A task's input error (ProbdaError) is returned as a
  value, not raised, so it is neither retried nor logged as a worker traceback,
  and is re-raised in the client unchanged; warnings a task logs are shown by
  the client.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
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


class LocalExecutor:
    """Runs jobs one after the other in this process.

    Attributes:
        threads: intra-op threads tasks should use (None: onnxruntime's default).
        description: for summaries.
        distributed: False: jobs may share objects with the caller.
    """

    distributed = False

    def __init__(self, threads: int | None = None):
        self.threads = threads
        self.description = "single process"

    def labelled(self, label: str) -> "LocalExecutor":
        return self

    def run(self, fn: Callable, jobs: list[tuple[str, tuple]]) -> Iterator[tuple[str, object]]:
        for name, args in jobs:
            yield name, fn(*args)


def check_workers(workers: int) -> int:
    """`workers` if >= 1, else ConfigError."""
    if workers < 1:
        raise ConfigError(f"--workers {workers}: need at least 1 worker")
    return workers


@contextlib.contextmanager
def open_executor(*, workers: int = 1, scheduler: str | None = None, threads: int | None = None):
    """LocalExecutor for one worker and no scheduler, else a DaskExecutor (LocalCluster or existing scheduler).

    Args:
        workers: worker processes of the LocalCluster (ignored with `scheduler`).
        scheduler: address of a running scheduler, e.g. tcp://127.0.0.1:8786.
        threads: onnxruntime intra-op threads per task (default: cores // workers
            locally, onnxruntime's default on an existing cluster).

    Yields:
        The executor.

    Raises:
        ConfigError: bad worker count or unreachable scheduler.
    """
    check_workers(workers)
    if not scheduler and workers == 1:
        yield LocalExecutor(threads)
        return
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as e:
            raise ConfigError(f"--scheduler {scheduler}: cannot connect ({e}); start one with `dask scheduler` and `dask worker {scheduler}`") from None
        try:
            yield DaskExecutor(client, threads=threads, description=f"dask: {scheduler}")
        finally:
            client.close()
        return
    per_worker = threads or max(1, physical_cores() // workers)
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=logging.ERROR, worker_dashboard_address=None)
    client = Client(cluster)
    try:
        yield DaskExecutor(client, threads=per_worker, description=f"dask LocalCluster, {workers} workers x {per_worker} threads")
    finally:
        client.close()
        cluster.close()


class DaskExecutor:
    """Runs jobs on a Dask client, yielding (name, result) as they complete.

    Args:
        client: a distributed.Client.
        label: prefix naming the work in errors (e.g. the image path).
        retries: automatic retries of a failed task.
        threads: intra-op threads tasks should use.
        description: for summaries.
    """

    distributed = True

    def __init__(self, client, *, label: str = "", retries: int = RETRIES, threads: int | None = None, description: str = "dask"):
        self.client, self.label, self.retries = client, label, retries
        self.threads, self.description = threads, description

    def labelled(self, label: str) -> "DaskExecutor":
        """The same client, naming `label` in errors."""
        return DaskExecutor(self.client, label=label, retries=self.retries, threads=self.threads, description=self.description)

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
