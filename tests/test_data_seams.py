"""The data seams later model families build on: raw counts, categorical covariates, strata,
and the encoder input transform a likelihood can ask for."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

import vaelab.data as data
from vaelab import registry
from vaelab.build import build_vae
from vaelab.data.splits import make_splits, prepare_arrays
from vaelab.distributions.likelihoods import GaussianDecoder
from vaelab.errors import VaelabError
from vaelab.nets import InputTransform, Log1p


def test_counts_keep_their_values_where_8_bit_data_is_scaled() -> None:
    x = np.random.default_rng(0).poisson(30.0, size=(40, 6))  # integers in 0..255: would read as pixels
    assert x.max() > 1
    (scaled,), levels = prepare_arrays([x], ["x"])
    assert levels == 256 and np.allclose(scaled, x / 255)
    (kept,), levels = prepare_arrays([x], ["x"], counts=True)
    assert levels is None and kept.dtype == np.float32 and np.array_equal(kept, x)
    s = data.load_data(x, counts=True, seed=0)
    assert s.kind == "counts" and s.discrete_levels is None
    assert np.array_equal(np.sort(torch.cat([s.train, s.val, s.test]).numpy(), axis=0), np.sort(x, axis=0))


@pytest.mark.parametrize("value, word", [(-2.0, "negative"), (3.5, "not a whole number")])
def test_counts_refuse_negative_or_fractional_values_naming_where(value: float, word: str) -> None:
    x = np.ones((10, 4))
    x[7, 2] = value
    with pytest.raises(VaelabError, match=rf"value {value:g} at row 7, column 2 is {word}") as err:
        data.load_data(x, counts=True)
    assert "\n" not in str(err.value)


def test_strata_stratify_both_draws() -> None:
    n = 400
    strata = np.array(["a"] * 300 + ["b"] * 100)
    x = np.random.default_rng(1).random((n, 3)).astype(np.float32)
    s = make_splits("t", x, strata=strata, test_fraction=0.25, val_fraction=0.2, seed=3)
    assert (len(s.train), len(s.val), len(s.test)) == (240, 60, 100)
    # the rows are identified by their values: count the strata of each split
    where = {tuple(r): k for r, k in zip(x.round(6).tolist(), strata)}
    for part, expected in (("test", {"a": 75, "b": 25}), ("val", {"a": 45, "b": 15})):
        got = Counter(where[tuple(r)] for r in getattr(s, part).numpy().round(6).tolist())
        assert got == expected
    with pytest.raises(VaelabError, match="stratify by has shape"):
        make_splits("t", x, strata=strata[:10])


def _with_batches(train_levels: list[int], test_levels: list[int]) -> data.DataSplits:
    rng = np.random.default_rng(0)
    x = rng.random((len(train_levels), 3)).astype(np.float32)
    xt = rng.random((len(test_levels), 3)).astype(np.float32)
    return make_splits("cells", x, x_test=xt, val_fraction=0.0, seed=0,
                       covariates=np.array(train_levels, float)[:, None], test_covariates=np.array(test_levels, float)[:, None],
                       covariate_names=("batch",), covariate_classes=(("donor-a", "donor-b", "donor-c"),))


def test_a_categorical_covariate_becomes_a_categorical_variable() -> None:
    s = _with_batches([0, 1, 2, 1, 0, 2], [2, 0])
    (v,) = data.context_variables(s, ["batch"], embedding=0)
    assert (v.name, v.kind, v.classes, v.class_names) == ("batch", "categorical", 3, ("donor-a", "donor-b", "donor-c"))
    c = data.context_columns(s, (v,), "test")
    assert c is not None and c[:, 0].tolist() == [2.0, 0.0]
    model = build_vae((3,), latent_dim=2, hidden=[8], likelihood="gaussian", context=(v,))
    assert model.context is not None and model.context(c).tolist() == [[0, 0, 1], [1, 0, 0]]


def test_a_level_only_in_the_test_split_is_refused_by_name() -> None:
    s = _with_batches([0, 1, 0, 1], [2, 0])
    with pytest.raises(VaelabError, match=r"level 'donor-c' of 'batch' appears in the test split .* never in training"):
        data.context_variables(s, ["batch"])


def test_covariate_classes_must_match_the_covariates() -> None:
    x = np.zeros((6, 2), np.float32)
    with pytest.raises(VaelabError, match="covariate_classes has 2 entries for 1 covariates"):
        make_splits("t", x, x_test=x, covariates=np.zeros((6, 1)), test_covariates=np.zeros((6, 1)),
                    covariate_names=("b",), covariate_classes=((), ("x",)))


class _Log1pGaussian(GaussianDecoder):
    """A test likelihood whose encoder reads log1p(x) (as the count likelihoods do)."""

    @staticmethod
    def encoder_input(x_shape: tuple[int, ...], **options: object) -> tuple[nn.Module, tuple[int, ...]]:
        return Log1p(), tuple(x_shape)


class _Doubling(GaussianDecoder):
    """A test likelihood whose encoder reads [x, x^2]: a transform that changes the feature shape."""

    @staticmethod
    def encoder_input(x_shape: tuple[int, ...], **options: object) -> tuple[nn.Module, tuple[int, ...]]:
        class Square(nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return torch.cat([x.flatten(1), x.flatten(1) ** 2], -1)
        return Square(), (2 * int(np.prod(x_shape)),)


@pytest.fixture
def test_likelihoods():
    for name, cls in (("test-log1p", _Log1pGaussian), ("test-doubling", _Doubling)):
        registry.register("likelihood", name, cls=cls)(lambda shapes, cls=cls: cls(shapes.decoder_net(1), shapes.x_shape))
    yield
    registry.unregister("likelihood", "test-log1p")
    registry.unregister("likelihood", "test-doubling")


def test_the_encoder_reads_the_likelihoods_input_transform(test_likelihoods: None) -> None:
    torch.manual_seed(0)
    model = build_vae((5,), latent_dim=2, hidden=[7], likelihood="test-log1p")
    net = model.encoder.net
    assert isinstance(net, InputTransform) and isinstance(net.transform, Log1p)
    x = torch.rand(4, 5) * 100
    assert torch.equal(net(x), net.net(torch.log1p(x)))
    wide = build_vae((5,), latent_dim=2, hidden=[7], likelihood="test-doubling")
    first = [m for m in wide.encoder.net.net.modules() if isinstance(m, nn.Linear)][0]
    assert first.in_features == 10  # built on the transform's feature shape
    assert wide.log_weights(x, 3).shape == (3, 4)
    plain = build_vae((5,), latent_dim=2, hidden=[7], likelihood="gaussian")
    assert not isinstance(plain.encoder.net, InputTransform)  # nothing changes for the others
