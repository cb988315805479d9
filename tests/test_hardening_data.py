"""Data files that read as something else: numbers Python reads and numpy does not, text that
is not UTF-8, repeated gene names, archives that inflate without bound, a damaged download
cache, a run folder given as data. Each is refused in one line naming the culprit and the fix."""

from __future__ import annotations

import gzip
import json
import time
import tracemalloc
import urllib.error
import urllib.request
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

from vaelab.data import load_data
from vaelab.data.tabular import load_table
from vaelab.errors import VaelabError


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    data = text.encode(encoding)
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


def _table(rows: int = 12) -> list[str]:
    """A header and ``rows`` rows of two whole-number columns (values 0..7, 1..9)."""
    return ["a,b"] + [f"{i % 8},{i % 9 + 1}" for i in range(rows)]


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# --- 1. numbers written with '_' or in other scripts' digits ---------------------------------------------

FOREIGN = [("1_000", "with '_' between digits", "as 1000"),
           ("\u0663", "non-ASCII digit '\u0663' (U+0663)", "as 3"),  # Arabic-Indic 3
           ("\uff11\uff12", "non-ASCII digit '\uff11' (U+FF11)", "as 12")]  # full-width 12


@pytest.mark.parametrize("cell, how, fix", FOREIGN)
@pytest.mark.parametrize("mixed", [False, True])
def test_a_number_python_reads_but_numpy_does_not_is_refused_where_it_is(tmp_path: Path, mixed: bool, cell: str,
                                                                          how: str, fix: str) -> None:
    lines = _table()
    lines[3] = f"{cell},4"  # line 4 of the file
    path = _write(tmp_path / "d.csv", "\n".join(lines) + "\n")
    with pytest.raises(VaelabError) as err:
        load_table(path) if mixed else load_data(path)  # was: "it could not be parsed as numbers", or read as 1000
    message = _one_line(err)
    for culprit in ("d.csv", "line 4, column 1", repr(cell), how, "ASCII digits 0-9", fix):
        assert culprit in message, message
    if mixed:
        assert "--column-types a=categorical" in message


def test_a_first_row_of_such_numbers_is_data_not_a_header(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "\n".join(["1_000,2"] + _table()[1:]) + "\n")
    for read in (load_data, load_table):  # was: the first row silently taken for a header of names
        with pytest.raises(VaelabError, match=r"line 1, column 1 is '1_000', a number written with '_'"):
            read(path)


def test_a_label_or_covariate_written_so_is_refused(tmp_path: Path) -> None:
    labelled = ["a,b,label"] + [f"{i % 8},{i % 9 + 1},{i % 3}" for i in range(12)]
    labelled[5] = "1,2,\u0661"  # Arabic-Indic 1: a class named '١' beside classes 0, 1 and 2
    path = _write(tmp_path / "l.csv", "\n".join(labelled) + "\n")
    for read in (load_data, load_table):
        with pytest.raises(VaelabError, match=r"line 6, column 3 \('label'\) is '\u0661'"):
            read(path)
    covariate = ["a,b,dose"] + [f"{i % 8},{i % 9 + 1},{i / 2}" for i in range(12)]
    covariate[2] = "1,2,2_5"
    path = _write(tmp_path / "c.csv", "\n".join(covariate) + "\n")
    for read in (load_data, load_table):
        with pytest.raises(VaelabError, match=r"line 3, column 3 .*'2_5', a number written with '_'"):
            read(path, covariates=("dose",))


def test_a_column_declared_categorical_keeps_such_cells_as_level_names(tmp_path: Path) -> None:
    lines = _table(40)
    for i in range(1, 41, 4):
        lines[i] = "1_000,4"  # a level of its own, in every split
    path = _write(tmp_path / "d.csv", "\n".join(lines) + "\n")
    table = load_table(path, column_types="a=categorical", seed=0)
    assert "1_000" in table.columns[0].levels


def test_the_command_line_names_the_cell(tmp_path: Path, refused) -> None:
    lines = _table()
    lines[2] = "5,\u0663"
    path = _write(tmp_path / "d.csv", "\n".join(lines) + "\n")
    out = tmp_path / "runs"
    refused(["train", "--data", path, "--out", out, "--epochs", 1], "d.csv': line 3, column 2 is '\u0663'", "as 3")
    refused(["train", "--data", path, "--likelihood", "mixed", "--out", out, "--epochs", 1],
            "line 3, column 2 ('b') is '\u0663'", "as 3")
    assert not out.exists()


# --- 2. text that is not UTF-8 --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["d.csv", "d.csv.gz"])
@pytest.mark.parametrize("row", [3, 15_000])  # the second beyond the text the first rows are read from
@pytest.mark.parametrize("mixed", [False, True])
def test_a_latin1_file_is_named_with_the_byte_its_line_and_how_to_save_it(tmp_path: Path, name: str, row: int,
                                                                          mixed: bool) -> None:
    lines = _table(row + 10)
    lines[row] = "caf\u00e9,1"  # line row + 1, in Latin-1: one byte 0xe9
    path = _write(tmp_path / name, "\n".join(lines) + "\n", encoding="latin-1")
    offset = sum(len(line) + 1 for line in lines[:row]) + 3
    with pytest.raises(VaelabError) as err:  # was: a UnicodeDecodeError traceback (row 15,000, plain reader)
        load_table(path) if mixed else load_data(path)
    message = _one_line(err)
    for culprit in (name, "is not UTF-8 text", f"byte 0xe9 at offset {offset:,}", f"(line {row + 1})",
                    "'\u00e9' in Latin-1", "save it as UTF-8", "iconv -f LATIN1 -t UTF-8"):
        assert culprit in message, message
    if name.endswith(".gz"):
        assert "of its decompressed text" in message and "zcat" in message


def test_a_utf16_file_is_named_as_such(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "\n".join(_table()) + "\n", encoding="utf-16")
    for read in (load_data, load_table):
        with pytest.raises(VaelabError, match=r"d\.csv' is UTF-16 text .*iconv -f UTF-16 -t UTF-8"):
            read(path)


def test_a_utf8_file_with_a_character_across_read_blocks_reads(tmp_path: Path) -> None:
    from vaelab.data.tabular import utf8_problem

    path = tmp_path / "d.csv"
    path.write_bytes(b"x" * (2**20 - 1) + "\u00e9\n".encode())  # the two bytes of é split by the 1 MiB blocks
    assert utf8_problem(path, "d") is None
    path.write_bytes(b"x" * (2**20 - 1) + b"\xc3")  # cut short at the end of the file
    assert "byte 0xc3 at offset 1,048,575" in utf8_problem(path, "d")


# --- 3. gene names that an .h5ad names twice -------------------------------------------------------------

def _h5ad(path: Path, genes: list[str]) -> Path:
    import anndata
    import pandas as pd

    x = np.random.default_rng(0).poisson(2.0, (30, len(genes))).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # anndata: "Variable names are not unique"
        adata = anndata.AnnData(x, obs=pd.DataFrame(index=[f"c{i}" for i in range(30)]),
                                var=pd.DataFrame(index=genes))
        adata.write_h5ad(path)
    return path


@pytest.mark.parametrize("backed", [False, True])
def test_an_h5ad_naming_a_gene_twice_is_refused(tmp_path: Path, backed: bool) -> None:
    path = _h5ad(tmp_path / "cells.h5ad", ["g1", "g2", "g3", "g2", "g4"])
    with pytest.raises(VaelabError) as err:  # was: trained, recording the genes ['g1', 'g2', 'g3', 'g2', 'g4']
        load_data(path, counts=True, backed=backed)
    message = _one_line(err)
    for culprit in ("cells.h5ad", "names gene 'g2' twice", "columns 1, 3 from 0", "adata.var_names_make_unique()"):
        assert culprit in message, message
    fine = _h5ad(tmp_path / "fine.h5ad", ["g1", "g2", "g3", "g2-1", "g4"])  # what var_names_make_unique() makes
    assert load_data(fine, counts=True, backed=backed).feature_names == ("g1", "g2", "g3", "g2-1", "g4")


def test_the_command_line_refuses_repeated_genes_without_anndatas_warning(tmp_path: Path, refused) -> None:
    path = _h5ad(tmp_path / "cells.h5ad", ["a", "b", "a", "b"])
    refused(["train", "--data", path, "--likelihood", "poisson", "--out", tmp_path / "runs", "--epochs", 1],
            "names gene 'a' twice", "2 name(s) repeated in all", "var_names_make_unique")
    assert not (tmp_path / "runs").exists()


# --- 4. a .csv.gz that inflates without bound ---------------------------------------------------------------

def _bomb(path: Path, mib: int) -> Path:
    """A .csv.gz of ``mib`` MiB of '0,0,...' text (512 numbers a line), 480 times smaller (gzip -9)."""
    block = (b",".join([b"0"] * 512) + b"\n") * 1024  # 1 MiB
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: with a gzip header
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(deflate.compress(block))
        f.write(deflate.flush())
    return path


@pytest.fixture
def memory_of(monkeypatch: pytest.MonkeyPatch):
    """Pretend the machine has ``bytes`` of memory available, with no VAELAB_MEMORY_LIMIT set."""
    import vaelab.evaluation.memory as memory

    monkeypatch.delenv(memory.MEMORY_LIMIT_ENV, raising=False)

    def pretend(available: float) -> None:
        monkeypatch.setattr(memory, "free_bytes", lambda device: available)

    return pretend


def test_a_gz_bomb_is_stopped_early_on_a_machine_of_a_terabyte(tmp_path: Path, memory_of) -> None:
    from vaelab.data.sources import check_text_fits

    memory_of(2.0**40)  # no cap set: the memory available is the only bound, and it is huge
    bomb = _bomb(tmp_path / "bomb.csv.gz", 300)
    assert bomb.stat().st_size < 2**20
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(VaelabError) as err:  # was: all 300 MiB inflated, passed, and parsed (GiBs of numbers)
            check_text_fits(bomb, "data file 'bomb.csv.gz'")
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = _one_line(err)
    for culprit in ("bomb.csv.gz' decompresses to more than 400 times its compressed size", "stopped there",
                    "gunzip -k"):
        assert culprit in message, message
    assert peak < 8 * 2**20 and seconds < 30


def test_the_numbers_of_a_csv_are_counted_against_the_memory(tmp_path: Path, memory_of) -> None:
    from vaelab.data.sources import check_text_fits

    memory_of(16 * 2**20)
    plain = tmp_path / "zeros.csv"
    plain.write_bytes((b",".join([b"0"] * 512) + b"\n") * 4096)  # 4 MiB of text: 2,097,152 numbers, 32 MiB read
    bomb = _bomb(tmp_path / "zeros.csv.gz", 4)
    # read a MiB at a time: 524,288 numbers a MiB, 8 MiB once read; the third MiB passes 16 MiB
    for path, words in ((plain, "zeros.csv' holds 1,572,864 numbers or more"),
                        (bomb, "zeros.csv.gz' decompresses to 3 MiB of text holding 1,572,864 numbers or more "
                               "(stopped there)")):
        with pytest.raises(VaelabError) as err:  # was: 4 MiB of text under 16 MiB passed, then 32 MiB were read
            check_text_fits(path, f"data file '{path.name}'")
        message = _one_line(err)
        for culprit in (words, "16 bytes a number", "the 16 MiB of memory available"):
            assert culprit in message, message
    with pytest.raises(VaelabError, match=r"holds 1,048,576 numbers or more: loading them needs at least 32 MiB \(32 "):
        load_table(plain)  # a mixed table holds each cell as text first: 32 bytes a number


def test_real_tables_pass_the_bounds(tmp_path: Path, memory_of, monkeypatch: pytest.MonkeyPatch) -> None:
    from vaelab.data import sources

    memory_of(64 * 2**20)
    monkeypatch.setattr(sources, "GZ_RATIO_FROM", 2**20)  # the ratio rule from 1 MiB of text on
    rng = np.random.default_rng(0)
    counts = (rng.random((1500, 400)) > 0.999) * rng.integers(1, 20, (1500, 400))  # 99.9 % zeros: about 320 to 1
    path = tmp_path / "counts.csv.gz"
    with gzip.open(path, "wt", compresslevel=9) as f:
        np.savetxt(f, counts, fmt="%d", delimiter=",")
    sources.check_text_fits(path, "counts")
    assert load_data(path, counts=True).shape == (400,)
    with pytest.raises(VaelabError, match="more than 400 times its compressed size"):
        sources.check_text_fits(_bomb(tmp_path / "bomb.csv.gz", 3), "bomb")


# --- 5. a damaged file in the download cache --------------------------------------------------------------

def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)


@pytest.mark.parametrize("name, folder", [("mnist", "mnist"), ("fashion-mnist", "fashion-mnist")])
def test_a_damaged_cached_file_is_named_as_a_checksum_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               name: str, folder: str) -> None:
    from vaelab.data import builtin
    from vaelab.data.idx import md5sum, write_idx

    monkeypatch.setattr(builtin, "FASHION_MNIST_DIR", tmp_path / "no-debian-copy")
    files = builtin.MNIST_FILES if name == "mnist" else builtin.FASHION_MNIST_FILES
    cache = tmp_path / "cache"
    (cache / folder).mkdir(parents=True)
    for file_name, _ in files.values():  # fake IDX files: not what the checksums describe
        write_idx(cache / folder / file_name, np.zeros((3, 28, 28) if "images" in file_name else 3, np.uint8))
    damaged = cache / folder / files["train_images"][0]
    _offline(monkeypatch)
    with pytest.raises(VaelabError) as err:  # was: "could not download ...: check the network", no word of the file
        load_data(name, cache=cache)
    message = _one_line(err)
    for culprit in (f"cached file '{damaged}' does not match its checksum", f"md5 {md5sum(damaged)}",
                    f"expected {files['train_images'][1]}", "Temporary failure in name resolution",
                    f"delete it (rm '{damaged}')"):
        assert culprit in message, message
    assert damaged.is_file()  # left for the user to look at


def test_a_cache_path_that_is_a_folder_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vaelab.data.idx import download

    _offline(monkeypatch)
    (tmp_path / "f.gz").mkdir()
    with pytest.raises(VaelabError, match=r"cached file '.*f\.gz' is not a regular file"):
        download("http://example.invalid/f.gz", tmp_path / "f.gz", "0" * 32)


# --- 6. a run folder given as data ----------------------------------------------------------------------------

def _png(path: Path, size: tuple[int, int]) -> None:
    from PIL import Image

    Image.new("RGB", size, (200, 10, 10)).save(path)


def _run_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"config": {"data": "digits"}, "data": {}}))
    (path / "model.safetensors").write_bytes(b"")
    _png(path / "curves.png", (130, 38))
    _png(path / "samples.png", (62, 22))
    return path


def test_a_run_folder_given_as_data_is_named_as_one(tmp_path: Path) -> None:
    run = _run_folder(tmp_path / "runs" / "digits-1")
    with pytest.raises(VaelabError) as err:  # was: "images of different sizes ...; pass --resize HxW"
        load_data(run)
    message = _one_line(err)
    for culprit in (f"data '{run}' is a vaelab run folder (config.json, model.safetensors)", "not a data folder",
                    "trained on 'digits'", f"vaelab eval '{run}'"):
        assert culprit in message, message
    assert "--resize" not in message
    with pytest.raises(VaelabError, match=r"holds vaelab run folders \('digits-1'\).*vaelab runs"):
        load_data(tmp_path / "runs")  # was: each run folder a class of the figures


def test_an_image_folder_with_a_config_json_is_still_data(tmp_path: Path) -> None:
    folder = tmp_path / "img"
    folder.mkdir()
    (folder / "config.json").write_text("{}")  # a data set's own notes: not a run without the run's records
    for i in range(10):
        _png(folder / f"{i}.png", (4, 4))
    assert load_data(folder).shape == (3, 4, 4)


def test_the_command_line_points_at_the_run(tmp_path: Path, refused) -> None:
    run = _run_folder(tmp_path / "runs" / "digits-1")
    refused(["train", "--data", run, "--out", tmp_path / "out", "--epochs", 1], "is a vaelab run folder",
            "vaelab eval")
    assert not (tmp_path / "out").exists()
