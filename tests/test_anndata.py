"""AnnData .h5ad files, the built-in single-cell sets and the pbmc3k downloader.

Small AnnData objects are written to tmp_path and read back; the built-ins are the files
scanpy and celltypist ship (installed in CI with ``pip install --no-deps``), checked against
independent reads of the same files; the downloader is exercised offline with a fake archive
served from a ``file://`` URL and with a network that fails.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import json
import re
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

import vaelab.data.singlecell as singlecell
from vaelab.data import context_variables, load_data
from vaelab.data.anndata import EXTRA_HINT, read_h5ad
from vaelab.errors import VaelabError

import anndata  # noqa: E402  (the extra: installed in CI)
import pandas as pd  # noqa: E402  (comes with anndata)

pytestmark = pytest.mark.usefixtures("one_thread")


def write_h5ad(path: Path, x: np.ndarray, obs: dict | None = None, layers: dict | None = None,
               fmt: str = "dense", x_is_none: bool = False) -> Path:
    """An .h5ad file of ``x`` [N, G] stored dense, CSR or CSC, with obs columns and layers."""
    n, g = x.shape

    def store(a: np.ndarray):
        return {"dense": lambda: a, "csr": lambda: sp.csr_matrix(a), "csc": lambda: sp.csc_matrix(a)}[fmt]()

    frame = pd.DataFrame(obs or {}, index=[f"cell{i}" for i in range(n)])
    adata = anndata.AnnData(X=None if x_is_none else store(x), obs=frame,
                            var=pd.DataFrame(index=[f"gene{j}" for j in range(g)]),
                            layers={k: store(v) for k, v in (layers or {}).items()})
    adata.write_h5ad(path)
    return path


def counts(n: int = 60, g: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(4.0, size=(n, g)).astype(np.float32)


# --- reading .h5ad files -------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
def test_matrix_round_trips_dense_and_sparse(tmp_path: Path, fmt: str) -> None:
    x = counts()
    x[:, 3] = 0.0  # a column with no stored values in the sparse formats
    x[5, 0] = 700.0  # above 255: nothing is scaled either way
    path = write_h5ad(tmp_path / "x.h5ad", x, obs={"row": np.arange(len(x))}, fmt=fmt)
    d = read_h5ad(path)
    assert d.x.dtype == np.float32 and np.array_equal(d.x, x)
    assert d.cells[7] == "cell7" and d.genes[2] == "gene2"
    # through load_data: every row lands in exactly one split, unchanged (found by its obs 'row')
    s = load_data(path, covariates=["row"], counts=True, seed=3)
    assert s.kind == "counts" and s.shape == (8,)
    rows = np.concatenate([getattr(s, f"{p}_covariates")[:, 0].numpy() for p in ("train", "val", "test")]).astype(int)
    got = np.concatenate([getattr(s, p).numpy() for p in ("train", "val", "test")])
    assert sorted(rows.tolist()) == list(range(len(x)))
    assert np.array_equal(got, x[rows])


def test_layer_instead_of_x_and_missing_layers_listed(tmp_path: Path) -> None:
    x = counts()
    logged = np.log1p(x)
    path = write_h5ad(tmp_path / "x.h5ad", logged, layers={"counts": x, "spliced": x + 1}, fmt="csr")
    assert np.allclose(read_h5ad(path).x, logged)
    assert np.array_equal(read_h5ad(path, layer="counts").x, x)
    assert np.array_equal(load_data(path, layer="spliced", counts=True, test_fraction=0.0, val_fraction=0.0).train
                          .numpy().sum(), (x + 1).sum())
    with pytest.raises(VaelabError, match=r"--layer raw: .* has no layer 'raw' \(layers: 'counts', 'spliced'\)"):
        load_data(path, layer="raw")
    # the normalised X is refused by a count likelihood, naming where
    with pytest.raises(VaelabError, match="not a whole number"):
        load_data(path, counts=True)
    empty = write_h5ad(tmp_path / "none.h5ad", x, layers={"counts": x}, x_is_none=True)
    with pytest.raises(VaelabError, match=r"has no X matrix \(layers: 'counts'\); pick one with --layer"):
        load_data(empty)
    assert np.array_equal(read_h5ad(empty, layer="counts").x, x)


def test_obs_columns_become_categorical_or_continuous_covariates(tmp_path: Path) -> None:
    n = 60
    rng = np.random.default_rng(1)
    batch = pd.Categorical(rng.choice(["b2", "b1"], n), categories=["b2", "b1", "unused"])
    donor = rng.choice(["zoe", "al", "kim"], n).astype(object)
    flag = rng.random(n) < 0.5
    size = rng.gamma(5.0, 100.0, n)
    path = write_h5ad(tmp_path / "x.h5ad", counts(n), obs={"batch": batch, "donor": donor, "flag": flag, "size": size})
    d = read_h5ad(path, covariates=["batch", "donor", "flag", "size"])
    assert d.covariate_classes == (("b2", "b1"), ("al", "kim", "zoe"), ("False", "True"), ())
    assert np.array_equal(d.covariates[:, 0], (np.asarray(batch) == "b1").astype(float))  # category order, unused dropped
    assert [("al", "kim", "zoe")[int(i)] for i in d.covariates[:, 1]] == donor.tolist()  # sorted names
    assert np.array_equal(d.covariates[:, 2], flag.astype(float))
    assert np.array_equal(d.covariates[:, 3], size)

    s = load_data(path, covariates=["batch", "size"], seed=0)
    batch_var, size_var = context_variables(s, ["batch", "size"])
    assert (batch_var.kind, batch_var.classes, tuple(batch_var.class_names)) == ("categorical", 2, ("b2", "b1"))
    train_size = s.train_covariates[:, 1].double()
    assert size_var.kind == "continuous"
    assert size_var.mean == pytest.approx(float(train_size.mean()), rel=1e-12)
    assert size_var.std == pytest.approx(float(train_size.std()), rel=1e-12)


@pytest.mark.parametrize("column, value, words", [
    ("batch", None, r"obs column 'batch' has 1 missing value\(s\), the first at row 4 \(cell 'cell4'\)"),
    ("size", np.nan, r"obs column 'size' has 1 missing value\(s\), the first at row 4 \(cell 'cell4'\)"),
])
def test_missing_obs_values_are_refused_naming_the_cell(tmp_path: Path, column: str, value, words: str) -> None:
    n = 20
    obs = {"batch": pd.Categorical(["a", "b"] * (n // 2)), "size": np.arange(n, dtype=float)}
    if column == "batch":
        obs["batch"] = pd.Categorical([None if i == 4 else v for i, v in enumerate(obs["batch"])], categories=["a", "b"])
    else:
        obs["size"][4] = value
    path = write_h5ad(tmp_path / "x.h5ad", counts(n), obs=obs)
    with pytest.raises(VaelabError, match=words):
        load_data(path, covariates=[column])


def test_unknown_obs_column_lists_the_columns(tmp_path: Path) -> None:
    path = write_h5ad(tmp_path / "x.h5ad", counts(), obs={"batch": ["a", "b"] * 30, "cell_type": ["t"] * 60})
    with pytest.raises(VaelabError, match=r"--condition-on donor: .* has no obs column 'donor' \(obs columns: 'batch', 'cell_type'\)"):
        load_data(path, covariates=["donor"])
    with pytest.raises(VaelabError, match=r"--stratify-by celltype: .* no obs column 'celltype' \(obs columns: 'batch', 'cell_type'\)"):
        load_data(path, stratify_by="celltype")


def test_stratified_split_keeps_each_cell_type_in_proportion(tmp_path: Path) -> None:
    types = np.array(["T"] * 200 + ["B"] * 120 + ["NK"] * 40 + ["DC"] * 40)
    rng = np.random.default_rng(2)
    order = rng.permutation(len(types))
    types = types[order]
    path = write_h5ad(tmp_path / "x.h5ad", counts(len(types)), obs={"cell_type": types, "row": np.arange(len(types))})

    def shares(seed: int, stratify: str | None) -> dict[str, Counter]:
        s = load_data(path, covariates=["row"], stratify_by=stratify, test_fraction=0.25, val_fraction=0.2, seed=seed)
        return {p: Counter(types[getattr(s, f"{p}_covariates")[:, 0].numpy().astype(int)]) for p in ("test", "val")}

    stratified = shares(5, "cell_type")
    # exact shares: 25% of each type to test, then 20% of what is left to validation
    assert stratified["test"] == {"T": 50, "B": 30, "NK": 10, "DC": 10}
    assert stratified["val"] == {"T": 30, "B": 18, "NK": 6, "DC": 6}
    assert shares(5, "cell_type") == stratified  # seeded
    # without strata, some seed of a few moves the shares off their exact values
    assert any(shares(seed, None)["test"] != stratified["test"] for seed in range(5))


def test_nan_in_a_sparse_matrix_is_counted_and_located(tmp_path: Path) -> None:
    x = counts()
    x[9, 2] = np.nan
    x[30, 5] = np.inf
    path = write_h5ad(tmp_path / "x.h5ad", np.zeros_like(x), layers={"counts": x}, fmt="csr")
    with pytest.raises(VaelabError) as err:
        load_data(path, layer="counts")
    message = str(err.value)
    assert "\n" not in message
    assert "layer 'counts': 2 NaN/inf value(s) in its sparse (CSR) matrix, the first (nan) at row 9 'cell9', column 2 'gene2'" in message
    csc = write_h5ad(tmp_path / "csc.h5ad", x, fmt="csc")
    with pytest.raises(VaelabError, match=r"2 NaN/inf value\(s\) in its sparse \(CSC\) matrix, the first \(nan\) at row 9 'cell9', column 2"):
        load_data(csc)
    dense = write_h5ad(tmp_path / "dense.h5ad", x)
    with pytest.raises(VaelabError, match=r"2 NaN/inf value\(s\) in its matrix, the first \(nan\) at row 9 'cell9'"):
        load_data(dense)


def test_a_level_seen_only_outside_training_is_refused(tmp_path: Path) -> None:
    n = 40
    batch = np.array(["main"] * (n - 1) + ["rare"])
    path = write_h5ad(tmp_path / "x.h5ad", counts(n), obs={"batch": batch})
    for seed in range(100):  # a seed whose test draw takes the one 'rare' cell
        s = load_data(path, covariates=["batch"], seed=seed, test_fraction=0.2)
        if 1.0 in s.test_covariates[:, 0].tolist():
            break
    else:
        raise AssertionError("no seed put the rare cell into the test split")
    with pytest.raises(VaelabError, match=r"--condition-on batch: level 'rare' of 'batch' appears in the test split"):
        context_variables(s, ["batch"])


@pytest.mark.parametrize("damage", ["junk", "truncated", "plain-hdf5"])
def test_a_corrupt_h5ad_is_one_line(tmp_path: Path, damage: str) -> None:
    good = write_h5ad(tmp_path / "good.h5ad", counts(), fmt="csr")
    bad = tmp_path / "bad.h5ad"
    if damage == "junk":
        bad.write_bytes(b"not an hdf5 file\n" * 50)
    elif damage == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    else:
        import h5py

        with h5py.File(bad, "w") as f:
            f["something"] = np.zeros(3)
    with pytest.raises(VaelabError, match=r"data file '.*bad.h5ad' is not a readable .h5ad file \(.+\); write it again") as err:
        load_data(bad)
    assert "\n" not in str(err.value)


def test_the_missing_extra_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_h5ad(tmp_path / "x.h5ad", counts())
    monkeypatch.setitem(sys.modules, "anndata", None)
    with pytest.raises(VaelabError, match=re.escape(f"needs the package anndata, an optional extra: {EXTRA_HINT}")):
        load_data(path)
    with pytest.raises(VaelabError, match=r"built-in data 'pbmc68k' .* needs the package anndata"):
        load_data("pbmc68k")


def test_the_base_package_does_not_import_anndata() -> None:
    code = "import sys, vaelab, vaelab.data, vaelab.cli, vaelab.runs; print('anndata' in sys.modules, 'scanpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_layer_and_stratify_by_are_for_h5ad_files(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", counts())
    with pytest.raises(VaelabError, match="--layer counts: it names a layer of an .h5ad file"):
        load_data(tmp_path / "x.npy", layer="counts")
    with pytest.raises(VaelabError, match="--stratify-by cell_type: it names an obs column"):
        load_data("digits", stratify_by="cell_type")
    with pytest.raises(VaelabError, match=r"built-in data 'celltypist-demo' has no per-cell columns \(cell_type\)"):
        load_data("celltypist-demo", stratify_by="cell_type")
    with pytest.raises(VaelabError, match="--layer counts: built-in data 'pbmc68k' has one count matrix"):
        load_data("pbmc68k", layer="counts")


# --- the built-in sets ---------------------------------------------------------------------------

def _package_path(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, f"{package} must be installed for these tests"
    return Path(list(spec.submodule_search_locations)[0], *parts)


@pytest.fixture(scope="module")
def pbmc68k_table() -> singlecell.CountTable:
    return singlecell.pbmc68k()


def test_pbmc68k_counts_are_recovered_exactly(pbmc68k_table: singlecell.CountTable) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the file's old layout
        adata = anndata.read_h5ad(_package_path("scanpy", "datasets", "10x_pbmc68k_reduced.h5ad"))
    stored = adata.raw.X.toarray().astype(np.float64)  # [700, 765] log1p(k * 1e4 / n), rounded to 3 decimals
    n = adata.obs["n_counts"].to_numpy(np.float64)[:, None]
    k = pbmc68k_table.x.astype(np.float64)
    assert k.shape == (700, 765) and np.array_equal(k, np.round(k)) and k.min() == 0
    assert np.array_equal(k, np.round(np.expm1(stored) * n / 1e4))  # the documented formula
    assert (k > 0).sum() == adata.raw.X.nnz and k.sum() == 486_651 and k.max() == 259
    nz = stored > 0
    # exact in the stored precision: each count, normalised again and rounded, gives the stored value ...
    assert np.abs(np.log1p(k * 1e4 / n) - stored)[nz].max() <= 5e-4 + 1e-6
    assert np.abs(stored * 1000 - np.round(stored * 1000)).max() < 3e-4  # (stored to 3 decimals, float32)
    # ... and no other integer could: the counts a stored value allows span less than one
    h = 5e-4 + 1e-6
    assert ((n * (np.expm1(stored + h) - np.expm1(stored - h)) / 1e4)[nz]).max() < 0.3
    # the naive check, "within 1e-3 of an integer before rounding", does not hold for this file
    assert np.abs(np.expm1(stored) * n / 1e4 - k).max() > 1e-3


def test_recover_counts_is_exact_on_synthetic_rounded_values() -> None:
    rng = np.random.default_rng(4)
    k = rng.integers(1, 300, size=5000).astype(np.float64)
    rows = rng.integers(0, 50, size=5000)
    totals = rng.integers(1500, 9000, size=50).astype(np.float64)
    stored = np.round(np.log1p(k * 1e4 / totals[rows]), 3).astype(np.float32)
    assert np.array_equal(singlecell.recover_counts(stored, rows, totals), k)
    damaged = stored.copy()
    i = int(np.argmin(k))  # a count of 1: the next whole counts are far apart in log space
    damaged[i] += np.float32(0.004)  # no whole count gives this value to 3 decimals
    with pytest.raises(VaelabError, match=r"of row \d+ gives not log1p\(k \* 10000 / n\) within"):
        singlecell.recover_counts(damaged, rows, totals)
    zero = totals.copy()
    zero[3] = 0.0
    with pytest.raises(VaelabError, match="the total of row 3 is 0"):
        singlecell.recover_counts(stored, rows, zero)


def test_pbmc68k_as_a_data_set(pbmc68k_table: singlecell.CountTable) -> None:
    s = load_data("pbmc68k", covariates=["phase", "percent_mito"], counts=True, seed=0)
    assert s.kind == "counts" and s.shape == (765,)
    assert (len(s.train), len(s.val), len(s.test)) == (567, 63, 70)
    assert len(s.class_names) == 10 and "CD14+ Monocyte" in s.class_names
    assert s.covariate_classes == (("G1", "G2M", "S"), ())
    total = sum(float(getattr(s, p).sum()) for p in ("train", "val", "test"))
    assert total == 486_651
    # stratified by cell type: each of the 10 types gives 10% (largest remainders) to the test split
    all_labels = Counter(pbmc68k_table.obs["bulk_labels"].astype(str))
    test = Counter(s.class_names[i] for i in s.test_labels.tolist())
    assert all(abs(test[c] - 0.1 * all_labels[c]) < 1 for c in all_labels)


def test_celltypist_demo_matches_the_csv(monkeypatch: pytest.MonkeyPatch) -> None:
    table = singlecell.celltypist_demo()
    assert table.x.shape == (559, 32_786) and table.x.dtype == np.float32
    path = _package_path("celltypist", "data", "samples", "sample_cell_by_gene.csv")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        first = [next(reader) for _ in range(3)]
    assert table.genes.tolist() == header[1:]
    for i, row in enumerate(first):  # the CSV's own numbers, parsed by the csv module, rounded
        assert table.cells[i] == row[0]
        assert np.array_equal(table.x[i], np.round(np.asarray(row[1:], dtype=np.float64)))
    assert table.x.min() == 0 and np.array_equal(table.x, np.round(table.x))
    monkeypatch.setattr(singlecell, "celltypist_demo", lambda: table)  # the same table, not parsed again
    s = load_data("celltypist-demo", counts=True)
    assert s.kind == "counts" and s.shape == (32_786,) and not s.has_labels
    assert (len(s.train), len(s.val), len(s.test)) == (453, 50, 56)
    assert float(s.train.sum() + s.val.sum() + s.test.sum()) == float(table.x.sum(dtype=np.float64))


def test_a_missing_package_names_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("scanpy", "celltypist") else real(name, *a))
    with pytest.raises(VaelabError, match=r"built-in data 'pbmc68k' is a file that the package scanpy ships; pip install scanpy"):
        load_data("pbmc68k")
    with pytest.raises(VaelabError, match="pip install celltypist$"):
        load_data("celltypist-demo")


# --- pbmc3k: the downloader, offline ---------------------------------------------------------------

def fake_10x_archive(path: Path, x: np.ndarray, extra: list[tarfile.TarInfo] = ()) -> str:
    """A tar.gz in the layout of 10x's filtered_gene_bc_matrices (matrix genes x cells); its md5."""
    n, g = x.shape
    mtx = io.BytesIO()
    scipy.io.mmwrite(mtx, sp.coo_matrix(x.T.astype(np.int64)), field="integer")
    files = {
        "filtered_gene_bc_matrices/hg19/matrix.mtx": mtx.getvalue(),
        "filtered_gene_bc_matrices/hg19/genes.tsv": "".join(f"ENSG{j:05d}\tGENE{j}\n" for j in range(g)).encode(),
        "filtered_gene_bc_matrices/hg19/barcodes.tsv": "".join(f"BC{i}-1\n" for i in range(n)).encode(),
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        for info in extra:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


@pytest.fixture
def fake_pbmc3k(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def make(x: np.ndarray, extra: list[tarfile.TarInfo] = (), md5: str | None = None) -> Path:
        archive = tmp_path / "served" / singlecell.PBMC3K_FILE
        archive.parent.mkdir(exist_ok=True)
        digest = fake_10x_archive(archive, x, extra)
        monkeypatch.setattr(singlecell, "PBMC3K_URLS", (archive.as_uri(),))
        monkeypatch.setattr(singlecell, "PBMC3K_MD5", md5 or digest)
        return tmp_path / "cache"
    return make


def test_pbmc3k_downloads_checks_caches_and_reads(fake_pbmc3k, monkeypatch: pytest.MonkeyPatch) -> None:
    x = counts(30, 7, seed=5)
    cache = fake_pbmc3k(x)
    good = singlecell.PBMC3K_URLS[0]
    monkeypatch.setattr(singlecell, "PBMC3K_URLS", (good.replace(singlecell.PBMC3K_FILE, "gone.tar.gz"), good))
    table = singlecell.pbmc3k(cache)  # the first mirror fails, the second serves the file
    assert np.array_equal(table.x, x) and table.genes[3] == "GENE3" and table.cells[2] == "BC2-1"
    cached = cache / "pbmc3k" / singlecell.PBMC3K_FILE
    assert cached.is_file()
    # cached and checked: a second load does not touch the network
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("downloaded again"))
    s = load_data("pbmc3k", cache=cache, counts=True, seed=1)
    assert s.kind == "counts" and s.shape == (7,)
    assert float(s.train.sum() + s.val.sum() + s.test.sum()) == float(x.sum())


def test_pbmc3k_offline_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(VaelabError) as err:
        load_data("pbmc3k", cache=tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert "could not download 'pbmc3k_filtered_gene_bc_matrices.tar.gz'" in message
    assert "Temporary failure in name resolution" in message and "check the network" in message
    assert singlecell.PBMC3K_MD5 in message
    assert not any((tmp_path / "pbmc3k").iterdir())  # nothing half-written left behind


def test_pbmc3k_wrong_checksum_is_refused(fake_pbmc3k) -> None:
    cache = fake_pbmc3k(counts(10, 4), md5="0" * 32)
    with pytest.raises(VaelabError, match="failed its checksum"):
        load_data("pbmc3k", cache=cache)
    assert not any((cache / "pbmc3k").iterdir())


@pytest.mark.parametrize("name, kind, words", [
    ("../evil.txt", tarfile.REGTYPE, "unsafe member name '../evil.txt'"),
    ("/etc/evil", tarfile.REGTYPE, "unsafe member name '/etc/evil'"),
    ("filtered_gene_bc_matrices/link", tarfile.SYMTYPE, "is a link or device"),
])
def test_pbmc3k_archive_members_are_checked(fake_pbmc3k, name: str, kind: bytes, words: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = 3 if kind == tarfile.REGTYPE else 0
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
    cache = fake_pbmc3k(counts(10, 4), extra=[info])
    with pytest.raises(VaelabError, match=words):
        load_data("pbmc3k", cache=cache)


# --- the command line ----------------------------------------------------------------------------

def test_cli_trains_a_poisson_vae_on_an_h5ad_layer_conditioned_on_obs(tmp_path: Path, capsys) -> None:
    from vaelab import load
    from vaelab.cli import main

    n = 80
    rng = np.random.default_rng(6)
    batch = rng.choice(["b1", "b2"], n)
    x = rng.poisson(np.where(batch[:, None] == "b1", 2.0, 6.0), size=(n, 10)).astype(np.float32)
    path = write_h5ad(tmp_path / "cells.h5ad", np.log1p(x), layers={"counts": x}, fmt="csr",
                      obs={"batch": pd.Categorical(batch), "cell_type": rng.choice(["T", "B"], n)})
    argv = ["train", "--data", path, "--layer", "counts", "--likelihood", "poisson", "--condition-on", "batch",
            "--stratify-by", "cell_type", "--epochs", "2", "--hidden", "16", "--latent-dim", "2", "--eval-k", "8",
            "--quiet", "--threads", "1", "--out", tmp_path / "runs", "--name", "cells"]
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    assert info.value.code in (0, None), capsys.readouterr().err
    run = tmp_path / "runs" / "cells"
    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["layer"] == "counts" and saved["config"]["stratify_by"] == "cell_type"
    assert saved["data"]["kind"] == "counts"
    model = load(run)
    (variable,) = model.spec.context
    assert variable.kind == "categorical" and tuple(variable.class_names) == ("b1", "b2")
    again = model.data()  # the run's data read back the same way (layer, strata, covariates)
    assert again.kind == "counts" and float(again.test.sum()) == float(load_data(
        path, layer="counts", covariates=["batch"], stratify_by="cell_type", counts=True).test.sum())


def test_cli_refuses_bad_h5ad_input_and_writes_nothing(tmp_path: Path, refused) -> None:
    n = 40
    path = write_h5ad(tmp_path / "cells.h5ad", counts(n), layers={"counts": counts(n)},
                      obs={"batch": ["main"] * (n - 1) + ["rare"]})
    out = tmp_path / "runs"
    base = ["train", "--data", path, "--epochs", "1", "--quiet", "--out", out, "--name", "r"]
    refused([*base, "--layer", "spliced"], "--layer spliced", "'counts'")
    refused([*base, "--condition-on", "donor"], "--condition-on donor", "'batch'")
    refused([*base, "--stratify-by", "celltype"], "--stratify-by celltype")
    for seed in range(100):
        s = load_data(path, covariates=["batch"], seed=seed)
        if 1.0 in s.test_covariates[:, 0].tolist() or 1.0 in s.val_covariates[:, 0].tolist():
            break
    refused([*base, "--condition-on", "batch", "--seed", seed, "--likelihood", "gaussian"], "level 'rare'")
    (tmp_path / "junk.h5ad").write_bytes(b"junk" * 100)
    refused(["train", "--data", tmp_path / "junk.h5ad", "--out", out, "--name", "r"], "junk.h5ad", "not a readable .h5ad")
    assert not out.exists() or not any(out.iterdir())
