"""Dask execution: a LocalCluster run equals the single-process run, blocks spread over workers, failures, lost workers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from probda_deploy.runtime import OnnxBackend
from probda_deploy.runtime import segment
from probda_deploy.runtime.executors import DaskExecutor

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    """One LocalCluster (2 single-threaded worker processes) for the whole module."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
        yield c


@pytest.fixture(scope="module")
def sampler(punet_export):
    return OnnxBackend(punet_export, device="cpu")


@pytest.fixture
def folder(tmp_path, blobs):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(5):
        tifffile.imwrite(src / f"im{i}.tif", (blobs((64 + 8 * i, 72), seed=i) * 1000).astype(np.uint16))
    return src


def _same_tifs(a: Path, b: Path) -> int:
    names = sorted(p.name for p in a.glob("*.tif"))
    assert names == sorted(p.name for p in b.glob("*.tif"))
    for name in names:
        np.testing.assert_array_equal(tifffile.imread(a / name), tifffile.imread(b / name), err_msg=name)
    return len(names)


def test_cluster_folder_equals_single_process(sampler, cluster, folder, tmp_path):
    single = segment(sampler, folder, tmp_path / "one", samples=4, seed=3, device="cpu")
    multi = segment(sampler, folder, tmp_path / "many", samples=4, seed=3, device="cpu", scheduler=cluster.scheduler_address)
    assert single.done == multi.done == 5 and not multi.failed
    assert multi.engine.startswith("dask")
    assert _same_tifs(tmp_path / "one", tmp_path / "many") == 20
    workers_used = {w for w in cluster.scheduler.workers}
    assert len(workers_used) == 2


def test_cluster_blocks_equal_single_process(sampler, cluster, tmp_path):
    img = np.random.default_rng(0).normal(size=(300, 260)).astype(np.float32)
    tifffile.imwrite(tmp_path / "big.tif", img)
    kw = dict(samples=3, seed=1, tile=96, device="cpu", fmt="ome-zarr")
    blocks = []
    segment(sampler, tmp_path / "big.tif", tmp_path / "one", **kw)
    report = segment(sampler, tmp_path / "big.tif", tmp_path / "many", scheduler=cluster.scheduler_address,
                            on_progress=lambda done, total: blocks.append((done, total)), **kw)
    assert report.done == 1 and blocks[-1] == (24, 24), "12 prior tiles + 12 blocks"
    a, b = (zarr.open_group(str(tmp_path / d / "big.ome.zarr"), mode="r") for d in ("one", "many"))
    np.testing.assert_array_equal(a["0"][:], b["0"][:])
    np.testing.assert_array_equal(a["labels/mask/1"][:], b["labels/mask/1"][:])


def test_cluster_instances_equal_single_process(sampler, cluster, tmp_path, blobs):
    """OME-Zarr instances labelled block by block on the workers: the same ids and object table as in one process."""
    tifffile.imwrite(tmp_path / "cells.tif", blobs((200, 180), seed=3))
    kw = dict(samples=3, seed=2, tile=64, device="cpu", fmt="ome-zarr", outputs="prob,consensus,std,instances,objects")
    one = segment(sampler, tmp_path / "cells.tif", tmp_path / "one", **kw)
    many = segment(sampler, tmp_path / "cells.tif", tmp_path / "many", scheduler=cluster.scheduler_address, **kw)
    assert one.done == many.done == 1 and many.results[0].objects == one.results[0].objects and one.results[0].objects.count > 0
    a, b = (zarr.open_group(str(tmp_path / d / "cells.ome.zarr"), mode="r") for d in ("one", "many"))
    np.testing.assert_array_equal(a["labels/instances/0"][:], b["labels/instances/0"][:])
    assert (tmp_path / "one" / "cells_objects.csv").read_text() == (tmp_path / "many" / "cells_objects.csv").read_text()


def test_cluster_failures_are_named(sampler, cluster, folder, tmp_path):
    (folder / "broken.tif").write_bytes(b"not a tiff")
    report = segment(sampler, folder, tmp_path / "out", samples=2, device="cpu", scheduler=cluster.scheduler_address)
    assert report.done == 5 and [r.path.name for r in report.failed] == ["broken.tif"]
    assert "broken.tif" in report.failed[0].error


def _die_once(marker: str) -> int:
    """Kills its worker process the first time it runs (a lost worker)."""
    if not os.path.exists(marker):
        Path(marker).write_text("x")
        os._exit(1)
    return 42


def test_lost_worker_work_is_redone(cluster, tmp_path):
    client = distributed.Client(cluster)
    try:
        results = dict(DaskExecutor(client, label="test").run(_die_once, [("a", (str(tmp_path / "m"),))]))
        assert results == {"a": 42}
    finally:
        client.close()
