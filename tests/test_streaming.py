"""Data left on disk (``--backed``): row stores over .npy and .h5ad files against the same data
in memory, the streamed training order, exact resumes, bounded memory, and the refusals.

Every run is tiny (a few thousand rows of 24 numbers, an MLP 24-16-3) so the file runs in
seconds on one CPU thread.
"""

from __future__ import annotations

import json
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from weights import assert_same_tensors, tensors

from vaelab.config import TrainConfig
from vaelab.context import Batch
from vaelab.data import load_data
from vaelab.data.disk import open_matrix
from vaelab.data.streaming import (BLOCK, BLOCK_BYTES, BUFFER, EpochStream, RowStore, _sha256, backed_splits,
                                   block_rows, epoch_order, row_totals)
from vaelab.errors import VaelabError
from vaelab.runs import read_metrics, train

pytestmark = pytest.mark.usefixtures("one_thread")

TIMING = ("seconds", "examples_per_second")


def quiet(*args: Any) -> None:
    pass


def untimed(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if k not in TIMING} for m in metrics]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("streaming")


@pytest.fixture(scope="module")
def counts_file(folder: Path) -> Path:
    """3,000 rows of 24 Poisson counts (int32), rates from three prototypes."""
    rng = np.random.default_rng(0)
    rates = rng.gamma(2.0, 1.5, size=(3, 24))
    x = rng.poisson(rates[rng.integers(0, 3, 3000)]).astype(np.int32)
    path = folder / "counts.npy"
    np.save(path, x)
    return path


@pytest.fixture(scope="module")
def real_npy(folder: Path) -> Path:
    x = np.random.default_rng(1).normal(size=(2000, 24)).astype(np.float32)
    path = folder / "real.npy"
    np.save(path, x)
    return path


def tiny(data: Path, out: Path, name: str, **changes: Any) -> TrainConfig:
    settings: dict[str, Any] = dict(data=str(data), hidden=[16], latent_dim=3, epochs=3, batch_size=100, eval_k=0,
                                    patience=0, device="cpu", out=str(out), name=name, likelihood="gaussian",
                                    binarize="none", threads=1)
    settings.update(changes)
    return TrainConfig.from_mapping(settings)


# --- the store against the arrays in memory ------------------------------------------------------


@pytest.mark.parametrize("counts", [False, True])
def test_backed_splits_equal_the_in_memory_splits(counts_file: Path, counts: bool) -> None:
    """Same split draws, same 8-bit scaling (int data in 0..255 divided by 255 in float32) or counts
    kept, same kind and levels, bit-for-bit the same rows."""
    mem = load_data(counts_file, seed=3, counts=counts)
    disk = load_data(counts_file, seed=3, counts=counts, backed=True)
    assert isinstance(disk.train, RowStore) and not isinstance(mem.train, RowStore)
    assert (disk.kind, disk.discrete_levels, disk.shape) == (mem.kind, mem.discrete_levels, mem.shape)
    assert disk.kind == ("counts" if counts else "unit")
    for part in ("train", "val", "test"):
        a, b = getattr(mem, part), getattr(disk, part)
        assert b.shape == a.shape and b.dtype == torch.float32
        assert torch.equal(b[:], a)
        assert torch.equal(torch.cat(list(b.blocks(rows=333))), a)


def test_store_indexing_matches_tensor_indexing(real_npy: Path) -> None:
    mem = load_data(real_npy, seed=0)
    disk = load_data(real_npy, seed=0, backed=True)
    a, b = mem.train, disk.train
    n = len(a)
    rng = np.random.default_rng(2)
    keys: list[Any] = [
        7, -1, slice(5, 50), slice(None, None, 7), slice(n - 3, None),
        np.array([5, 3, 3, 900, 0]),  # unsorted, repeated
        torch.from_numpy(rng.integers(0, n, 200)),  # random with repeats (latent health's draws)
        torch.from_numpy(np.sort(rng.choice(n, 300, replace=False))),  # sorted, spread
        torch.from_numpy(rng.random(n) < 0.1),  # a boolean mask
        np.array([], dtype=np.int64),
    ]
    for key in keys:
        assert torch.equal(b[key], a[key]), key
    assert torch.equal(Batch(b)[10:20].x, a[10:20])
    assert b.to("cpu").shape == b.shape and isinstance(b.to("cpu"), RowStore)
    with pytest.raises(IndexError):
        b[n]
    with pytest.raises(IndexError):
        b[np.array([0, n])]


def test_images_and_hash_match(folder: Path) -> None:
    """[N, H, W] uint8 images become (1, H, W) in [0, 1]; the store hashes as the tensor would."""
    import hashlib

    x = np.random.default_rng(3).integers(0, 256, size=(300, 5, 4), dtype=np.uint8)
    path = folder / "images.npy"
    np.save(path, x)
    mem, disk = load_data(path, seed=1), load_data(path, seed=1, backed=True)
    assert disk.shape == mem.shape == (1, 5, 4) and disk.discrete_levels == 256
    assert torch.equal(disk.test[:], mem.test)
    t = mem.train.contiguous()
    h = hashlib.sha256()
    h.update(f"{t.dtype}|{tuple(t.shape)}\n".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    assert _sha256(disk.train) == h.hexdigest()
    assert torch.equal(row_totals(disk.train), mem.train.reshape(len(t), -1).double().sum(-1))


def test_labels_stratify_the_backed_split_like_the_in_memory_one(real_npy: Path) -> None:
    """backed_splits (used for .h5ad obs columns) draws the stratified split make_splits draws."""
    from vaelab.data.splits import make_splits

    x = np.load(real_npy)
    labels = np.random.default_rng(4).integers(0, 5, len(x))
    cov = np.random.default_rng(5).normal(size=(len(x), 1))
    mem = make_splits("m", x, labels, seed=7, covariates=cov, covariate_names=("dose",))
    disk = backed_splits("m", open_matrix(real_npy), labels, seed=7, covariates=cov, covariate_names=("dose",))
    for part in ("train", "val", "test"):
        assert torch.equal(getattr(disk, part)[:], getattr(mem, part))
        assert torch.equal(getattr(disk, f"{part}_labels"), getattr(mem, f"{part}_labels"))
        assert torch.equal(getattr(disk, f"{part}_covariates"), getattr(mem, f"{part}_covariates"))


# --- the streamed order --------------------------------------------------------------------------


def test_blocks_stay_within_their_bytes_whatever_the_width(folder: Path) -> None:
    """A group of the training order (and a block of a whole-file pass) is a few MiB for 20 or
    30,000 features: rows per block shrink as rows widen."""
    for genes, rows in ((20, BLOCK), (1_000, 65), (30_000, 2)):
        path = folder / f"wide{genes}.npy"
        np.save(path, np.zeros((4, genes), dtype=np.float32))
        store = RowStore(open_matrix(path), (genes,))
        assert block_rows(store) == rows and block_rows(store) * genes * 4 <= max(BLOCK_BYTES, genes * 4)


def test_epoch_order_is_a_seeded_permutation_of_shuffled_blocks() -> None:
    n, block, buffer = 10_000, 50, 4
    order = epoch_order(n, torch.Generator().manual_seed(1), block, buffer)
    assert torch.equal(torch.sort(order).values, torch.arange(n))
    assert torch.equal(order, epoch_order(n, torch.Generator().manual_seed(1), block, buffer))
    assert not torch.equal(order, epoch_order(n, torch.Generator().manual_seed(2), block, buffer))
    group = block * buffer
    for g in range(0, n, group):  # each group: whole blocks, at most `buffer` of them
        members = order[g : g + group]
        blocks = torch.unique(members // block)
        assert len(blocks) <= buffer and len(members) == sum(min(block, n - int(b) * block) for b in blocks)
        assert not torch.equal(members, torch.sort(members).values)  # shuffled within the group
    # the blocks come in a random order: the first group is not the start of the file (chance 1/C(200, 4))
    assert set(torch.unique(order[:group] // block).tolist()) != {0, 1, 2, 3}


@pytest.mark.parametrize("prefetch", [0, 2])
def test_epoch_stream_serves_the_rows_of_its_order(real_npy: Path, prefetch: int) -> None:
    store = load_data(real_npy, seed=0, backed=True).train
    n = len(store)
    order = epoch_order(n, torch.Generator().manual_seed(5), block=32, buffer=3)
    c = torch.arange(n, dtype=torch.float32)[:, None]
    known = torch.arange(n) % 3 == 0
    expected = store[:][order]
    with EpochStream(store, order, c, known, group=96, prefetch=prefetch) as stream:
        for a in range(0, n, 70):  # batches that straddle the groups
            batch = stream[a : a + 70]
            assert torch.equal(batch.x, expected[a : a + 70])
            assert torch.equal(batch.c, c[order][a : a + 70]) and torch.equal(batch.known, known[order][a : a + 70])
        with pytest.raises(VaelabError, match="went back"):
            stream[0:10]


def test_a_reader_error_reaches_the_training_thread(real_npy: Path) -> None:
    store = load_data(real_npy, seed=0, backed=True).train

    def broken(rows: np.ndarray) -> np.ndarray:
        raise OSError("disk gone")

    store.matrix.read_rows = broken  # type: ignore[method-assign]
    with EpochStream(store, torch.arange(len(store)), group=64, prefetch=2) as stream:
        with pytest.raises(OSError, match="disk gone"):
            stream[0:10]


# --- training from disk ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def backed_run(counts_file: Path, folder: Path) -> Path:
    """Three epochs from disk, uninterrupted: the reference."""
    out = folder / "runs"
    _, result = train(tiny(counts_file, out, "full", backed=True), progress=False, figures=False, log=quiet)
    assert (result.stopped, result.epochs_done) == ("completed", 3)
    return out / "full"


def test_backed_training_is_seeded_and_resumes_exactly(backed_run: Path, counts_file: Path, tmp_path: Path) -> None:
    _, again = train(tiny(counts_file, tmp_path, "again", backed=True), progress=False, figures=False, log=quiet)
    assert_same_tensors(tensors(tmp_path / "again" / "checkpoint.safetensors"),
                        tensors(backed_run / "checkpoint.safetensors"))
    train(tiny(counts_file, tmp_path, "part", backed=True, epochs=1), progress=False, figures=False, log=quiet)
    _, resumed = train(resume=tmp_path / "part", epochs=3, progress=False, figures=False, log=quiet)
    assert resumed.epochs_done == 3
    assert_same_tensors(tensors(tmp_path / "part" / "checkpoint.safetensors"),
                        tensors(backed_run / "checkpoint.safetensors"))
    assert untimed(read_metrics(tmp_path / "part")) == untimed(read_metrics(backed_run))
    config = json.loads((backed_run / "config.json").read_text())["config"]
    assert config["backed"] is True


def test_backed_training_learns_like_in_memory(backed_run: Path, counts_file: Path, tmp_path: Path) -> None:
    """Another visiting order, the same model class: after three epochs the validation ELBOs of
    the two runs agree to within a few per cent (each run's own spread over seeds is of that size)."""
    _, mem = train(tiny(counts_file, tmp_path, "mem"), progress=False, figures=False, log=quiet)
    disk = read_metrics(backed_run)[-1]["val_elbo"]
    assert abs(disk - mem.metrics[-1]["val_elbo"]) < 0.05 * abs(mem.metrics[-1]["val_elbo"])
    assert read_metrics(backed_run)[0]["val_elbo"] < disk  # it learnt


def test_backed_run_evaluates_reading_rows_in_chunks(backed_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """vaelab eval / report on a backed run: the test rows are read a batch at a time, never all at once."""
    from vaelab.runs import load

    requests: list[int] = []
    model = load(backed_run)
    data = model.data()
    assert isinstance(data.test, RowStore)
    original = RowStore._read
    monkeypatch.setattr(RowStore, "_read", lambda self, positions: (requests.append(len(positions)),
                                                                    original(self, positions))[1])
    monkeypatch.setattr(model, "data", lambda: data)
    ev = model.evaluate(k=8, batch_size=50, gap_examples=4, gap_steps=10, mi_samples=200, estimator="is")
    assert ev.n == len(data.test) == 300
    assert requests and max(requests) <= 100  # a batch (latent health's: max(batch_size, 100)), never all 300


def test_backed_training_over_a_file_larger_than_the_cap(counts_file: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch, refused: Any) -> None:
    """With the memory cap below the file's in-memory size, the in-memory path is refused in one
    line (size, cap, "add --backed true"), nothing written; --backed trains under the same cap."""
    monkeypatch.setenv("VAELAB_MEMORY_LIMIT", "500K")  # the file: 3000 x 24 int32, about 0.85 MiB to load
    args = ["train", "--data", counts_file, "--likelihood", "gaussian", "--binarize", "none", "--epochs", "1",
            "--hidden", "16", "--latent-dim", "3", "--eval-k", "0", "--out", tmp_path, "--name", "capped", "--quiet"]
    line = refused(args, "3,000 x 24 values", "VAELAB_MEMORY_LIMIT=500K", "add --backed true")
    assert "needs about 844 KiB" in line and not (tmp_path / "capped").exists()  # 288,000 B stored + 2 x float32
    _, result = train(tiny(counts_file, tmp_path, "capped", backed=True, epochs=1), progress=False, figures=False,
                      log=quiet)
    assert result.epochs_done == 1


def test_streaming_an_epoch_holds_a_bounded_amount_of_memory(folder: Path) -> None:
    """An epoch over a 16 MiB file reads it all, holding no more than a few groups of rows:
    numpy's allocations (every row read, traced by tracemalloc) peak far below the file."""
    path = folder / "big.npy"
    np.save(path, np.random.default_rng(6).normal(size=(32_768, 128)).astype(np.float32))  # 16 MiB
    store = load_data(path, seed=0, backed=True).train
    block = block_rows(store)  # as the training loop streams it
    assert block == BLOCK  # 256 rows of 128 float32: 128 KiB, within BLOCK_BYTES
    order = epoch_order(len(store), torch.Generator().manual_seed(0), block, BUFFER)
    group_bytes = block * BUFFER * 128 * 4  # 2 MiB
    tracemalloc.start()
    try:
        total = 0.0
        with EpochStream(store, order, group=block * BUFFER, prefetch=2) as stream:
            for a in range(0, len(store), 512):
                total += float(stream[a : a + 512].x.sum())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total != 0.0
    # the queue (2 groups), the group being read and the one in use, with their copies
    assert store.nbytes > 12 * 2**20 and peak < 6 * group_bytes


# --- refusals ------------------------------------------------------------------------------------------


def test_backed_refusals(folder: Path, counts_file: Path, tmp_path: Path, refused: Any) -> None:
    csv = folder / "table.csv"
    csv.write_text("1,2\n3,4\n5,6\n")
    with pytest.raises(VaelabError, match=r"--backed reads \.npy and \.h5ad.*table\.csv"):
        load_data(csv, backed=True)
    with pytest.raises(VaelabError, match="--backed reads"):
        load_data("digits", backed=True)
    # a Bernoulli likelihood on non-binary data binarizes each epoch: not from disk, refused before any write
    refused(["train", "--data", counts_file, "--backed", "true", "--likelihood", "bernoulli", "--epochs", "1",
             "--out", tmp_path, "--name", "bern", "--quiet"], "--backed", "--binarize none")
    assert not (tmp_path / "bern").exists()
    bad = folder / "bad.npy"
    x = np.ones((50, 4), dtype=np.float32)
    x[17, 2] = 0.5
    np.save(bad, x)
    with pytest.raises(VaelabError, match=r"value 0.5 at row 17, column 2 .*count"):
        load_data(bad, backed=True, counts=True)
    x[30, 1] = np.nan
    np.save(bad, x)
    with pytest.raises(VaelabError, match=r"row 30, column 1 .*NaN"):
        load_data(bad, backed=True)


# --- .h5ad files ----------------------------------------------------------------------------------------


def _write_h5ad(path: Path, x: np.ndarray, layout: str) -> None:
    import anndata
    import scipy.sparse as sp

    matrix = {"dense": x, "csr": sp.csr_matrix(x), "csc": sp.csc_matrix(x)}[layout]
    anndata.AnnData(X=matrix, layers={"counts": sp.csr_matrix(x)}).write_h5ad(path)


@pytest.mark.parametrize("layout", ["dense", "csr"])
def test_h5ad_matrix_reads_rows_like_the_array(folder: Path, layout: str) -> None:
    x = np.random.default_rng(7).poisson(0.7, size=(500, 30)).astype(np.float32)  # mostly zeros
    path = folder / f"{layout}.h5ad"
    _write_h5ad(path, x, layout)
    for layer in (None, "counts"):
        store = RowStore(open_matrix(path, layer), (30,))
        assert store.shape == (500, 30)
        assert torch.equal(store[:], torch.from_numpy(x))
        idx = np.array([499, 3, 3, 250, 0])
        assert torch.equal(store[idx], torch.from_numpy(x[idx]))
    splits = backed_splits(str(path), open_matrix(path), counts=True, seed=2)
    assert splits.kind == "counts"
    assert torch.equal(torch.cat([splits.train[:], splits.val[:], splits.test[:]]).sum(0), torch.from_numpy(x).sum(0))


@pytest.fixture(scope="module")
def cells_file(folder: Path) -> Path:
    """600 cells x 40 genes of Poisson counts (CSR X, a dense 'counts' layer), obs: a categorical
    batch, a string cell type, a numeric dose."""
    import anndata
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(9)
    x = rng.poisson(rng.gamma(1.0, 1.0, size=(3, 40))[rng.integers(0, 3, 600)]).astype(np.float32)
    obs = pd.DataFrame({"batch": pd.Categorical(rng.choice(["a", "b", "c"], 600)),
                        "cell_type": rng.choice(["t", "b", "nk"], 600), "dose": rng.normal(size=600)},
                       index=[f"c{i}" for i in range(600)])
    path = folder / "cells.h5ad"
    anndata.AnnData(X=sp.csr_matrix(x), obs=obs, layers={"counts": x}).write_h5ad(path)
    return path


@pytest.mark.parametrize("layer", [None, "counts"])
def test_backed_h5ad_equals_the_in_memory_reader(cells_file: Path, layer: str | None) -> None:
    """Sparse X and a dense layer, obs covariates (categorical and numeric) and a stratified split:
    the parts, covariates and level names of vaelab.data.anndata's in-memory reader."""
    options: dict[str, Any] = dict(counts=True, covariates=["batch", "dose"], stratify_by="cell_type", layer=layer,
                                   seed=2)
    mem, disk = load_data(cells_file, **options), load_data(cells_file, backed=True, **options)
    assert disk.kind == mem.kind == "counts"
    assert disk.covariate_classes == mem.covariate_classes == (("a", "b", "c"), ())
    for part in ("train", "val", "test"):
        assert torch.equal(getattr(disk, part)[:], getattr(mem, part))
        assert torch.equal(getattr(disk, f"{part}_covariates"), getattr(mem, f"{part}_covariates"))
    with pytest.raises(VaelabError, match="no layer 'spliced'"):
        load_data(cells_file, backed=True, layer="spliced")
    with pytest.raises(VaelabError, match="no obs column 'donor'"):
        load_data(cells_file, backed=True, covariates=["donor"])


def test_backed_h5ad_trains_a_conditional_count_model(cells_file: Path, tmp_path: Path) -> None:
    """vaelab train --backed on an .h5ad file, conditioned on an obs column, with a count likelihood."""
    from vaelab.cli import main

    with pytest.raises(SystemExit) as done:
        main(["train", "--data", str(cells_file), "--backed", "true", "--likelihood", "poisson", "--condition-on",
              "batch", "--epochs", "1", "--hidden", "16", "--latent-dim", "3", "--eval-k", "5", "--threads", "1",
              "--out", str(tmp_path), "--name", "cells", "--quiet"])
    assert done.value.code in (0, None)
    assert json.loads((tmp_path / "cells" / "config.json").read_text())["config"]["backed"] is True
    assert (tmp_path / "cells" / "eval.json").is_file() and (tmp_path / "cells" / "reconstructions.png").is_file()


def test_h5ad_refusals(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.random.default_rng(8).poisson(1.0, size=(40, 6)).astype(np.float32)
    csc = folder / "csc.h5ad"
    _write_h5ad(csc, x, "csc")
    with pytest.raises(VaelabError, match=r"by columns \(CSC\).*tocsr"):
        open_matrix(csc)
    with pytest.raises(VaelabError, match=r"no layer 'spliced' \(layers: counts\)"):
        open_matrix(csc, "spliced")
    x[9, 4] = np.nan
    nan = folder / "nan.h5ad"
    _write_h5ad(nan, x, "csr")
    with pytest.raises(VaelabError, match=r"sparse matrix.*row 9, column 4"):
        backed_splits(str(nan), open_matrix(nan))
    monkeypatch.setitem(sys.modules, "anndata", None)
    with pytest.raises(VaelabError, match=r"anndata.*pip install 'vaelab\[anndata\]'"):
        load_data(nan, backed=True)
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(VaelabError, match=r"h5py.*pip install 'vaelab\[anndata\]'"):
        open_matrix(csc)
