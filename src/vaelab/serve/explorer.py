"""What the latent space explorer computes: a trained model and its test set, no HTTP.

An :class:`Explorer` loads a run once and precomputes what every page needs:

* the **map**: the posterior means E_q[z|x] of the test set in 2-D, the latents themselves
  when D = 2, else their first two principal components. A point c of the plane lifts back
  to the latent space as ``z = center + c @ components`` (the other directions stay at the
  data mean), so decoding an empty spot of the map is well defined;
* the **dimensions**, ordered by their KL to the prior averaged over the test set. For the
  diagonal Gaussian posterior and the N(0, I) prior, per dimension d,

      KL_d = 0.5 * (mu_d^2 + sigma_d^2 - 1 - log sigma_d^2)

  (:func:`vaelab.evaluation.kl_per_dimension`, closed form for any factorised pair). A
  dimension is *inactive* (collapsed onto the prior) when its mean KL is below 0.01 nats or
  its activity Var_x(E_q[z_d|x]) is below 0.01. When the posterior or prior does not
  factorise (full covariance, flows, mixture priors) a per-dimension KL is not defined: the
  dimensions are then ordered by activity alone.

**Conditional models.** A conditional VAE (``--condition-on label``, maybe with covariates)
scores x given its context c: the map, the dimensions' KL(q(z|x, c) || p(z|c)), the posteriors
and the reconstructions use each test example's own c. Decoding a chosen z, sampling
z ~ p(z|c), the sliders and interpolation need a c from the user: :meth:`Explorer.context`
builds it from a class (by id or name; the page's class selector) and, when the model also
conditions on continuous covariates, which the page cannot set, from the covariates of a
chosen test example (``context_of``). An upload is encoded and scored under that c:
log p(x|c). The semi-supervised M2 (``spec.family == "m2"``, a :class:`~vaelab.model.Classifier`)
needs no class to encode (q(z|x) uses the class its classifier q(y|x) predicts); the
explorer shows the predicted class and its probability, and decodes under the chosen class.

**Hierarchies.** For a ladder VAE (``--latent-dims``, :mod:`vaelab.ladder`) the explorer's
coordinates are the prior's standard-normal noise eps, with z = colour(eps): z_L = eps_L,
z_i = mu_i(z_{i+1}) + sigma_i(z_{i+1}) eps_i (:func:`vaelab.ladder.colour`). The prior is then
N(0, I) as for one layer, so the sliders' range and the sampling mean the same, and moving a
slider of an upper-layer unit moves the layers below it along the top-down path, their noise
held: a traversal per layer. Examples sit at the eps of their posterior mean path; their
spread is shown per unit given the layers above (in noise units); dimensions are ordered by
their KL given the layers above.

Everything the web pages show comes out of the methods here as plain JSON-ready values;
images are rendered once, as PNG data URLs (see :func:`render`). Methods do torch work and
are not thread-safe: the app calls them one at a time, under ``torch.no_grad()``.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..context import Variable
from ..errors import VaelabError
from ..evaluation import DEFAULTS, kl_per_dimension
from ..model import Classifier
from ..objectives import elbo
from ..runs import TrainedModel, interpolate_latents, load, read_metrics

__all__ = ["Explorer", "Projection", "render", "is_image", "INACTIVE_KL", "INACTIVE_ACTIVITY"]

INACTIVE_KL = 0.01  # nats: a dimension whose mean KL is below this carries no information
INACTIVE_ACTIVITY = 0.01  # Var_x(E_q[z_d|x]) below this: the posterior mean ignores x
MAP_POINTS = 2000  # test examples drawn on the map at most (the first ones of the test split)
LISTED_CLASSES = 40  # class names an error message lists at most
LOG_PX_K = DEFAULTS.k  # importance samples for log p(x) of an upload (the evaluation's K)
LOG_PX_GROUPS = 10  # ... drawn as this many independent groups, for the standard error
ELBO_K = 100  # samples of E_q[log p(x|z)] in an upload's ELBO


def is_image(shape: tuple[int, ...]) -> bool:
    """Images are (C, H, W) with C = 1 (grey) or 3 (RGB); anything else is shown as a vector."""
    return len(shape) == 3 and shape[0] in (1, 3)


def render(x: Tensor, shape: tuple[int, ...]) -> dict[str, Any]:
    """One example as the page draws it: ``{"png": data URL}`` for an image (values clipped
    to [0, 1]), ``{"values": [...]}`` (flattened) for anything else."""
    a = x.detach().to("cpu", torch.float32).numpy()
    if not is_image(shape):
        return {"values": [round(float(v), 5) for v in a.reshape(-1)]}
    pixels = (np.clip(a.reshape(shape), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)  # [C, H, W]
    img = Image.fromarray(pixels[0], "L") if shape[0] == 1 else Image.fromarray(pixels.transpose(1, 2, 0), "RGB")
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)
    return {"png": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")}


@dataclass(frozen=True)
class Projection:
    """The map's plane: ``coords = (z - center) @ components.T`` and back ``z = center + coords @ components``.

    ``components`` is ``[2, D]`` with orthonormal rows (the identity when D = 2; for D = 1 the
    second row is zero and the map's vertical axis carries nothing).
    """

    kind: Literal["latent", "pca"]
    center: Tensor  # [D]
    components: Tensor  # [2, D]
    explained: list[float]  # fraction of the variance of the means along each axis

    @classmethod
    def fit(cls, means: Tensor) -> Projection:
        """The identity for 2-D latents, else PCA (an SVD of the centred posterior means ``[N, D]``)."""
        d = means.shape[1]
        if d == 2:
            var = means.var(0) if means.shape[0] > 1 else torch.ones(2)
            return cls("latent", torch.zeros(2), torch.eye(2), (var / var.sum().clamp_min(1e-12)).tolist())
        center = means.mean(0) if len(means) else torch.zeros(d)  # [D]
        if d == 1 or means.shape[0] < 2:
            comps = torch.zeros(2, d)
            comps[0, 0] = 1.0
            if d > 1:
                comps[1, 1] = 1.0
            return cls("pca" if d > 1 else "latent", center if d > 1 else torch.zeros(d), comps, [1.0, 0.0])
        _, s, vh = torch.linalg.svd(means - center, full_matrices=False)  # vh [min(N,D), D]
        comps = vh[:2]
        signs = torch.where(comps.sum(1, keepdim=True) < 0, -1.0, 1.0)  # a fixed orientation
        var = s**2
        return cls("pca", center, comps * signs, (var[:2] / var.sum().clamp_min(1e-12)).tolist())

    def to_plane(self, z: Tensor) -> Tensor:
        """``[N, D]`` latents to ``[N, 2]`` map coordinates."""
        return (z - self.center) @ self.components.T

    def lift(self, coords: Tensor) -> Tensor:
        """``[N, 2]`` map coordinates to ``[N, D]`` latents on the plane."""
        return self.center + coords @ self.components

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "center": _floats(self.center), "components": _floats(self.components),
                "explained": [round(float(e), 4) for e in self.explained]}


def _floats(t: Tensor, digits: int = 5) -> Any:
    """A tensor as nested lists of rounded floats (JSON)."""
    return np.round(t.detach().to("cpu", torch.float64).numpy(), digits).tolist()


class Explorer:
    """A trained model, its test set and everything precomputed for the explorer's pages.

    Args:
        model: the loaded run.
        map_points: test examples drawn on the map at most.
    """

    def __init__(self, model: TrainedModel, map_points: int = MAP_POINTS) -> None:
        self.model = model
        self.shape = tuple(model.x_shape)
        self.image = is_image(self.shape)
        self.note: str | None = None  # why there is no map, when there is none
        self.variables: tuple[Variable, ...] = tuple(model.spec.context)  # what the model conditions on
        self.label = model.spec.label()  # the class variable (the page's class selector), or None
        self.label_column = None if self.label is None else self.variables.index(self.label)
        self.covariates = tuple(v.name for v in self.variables if v.kind == "continuous")  # not settable here
        self.classifier = model.vae if isinstance(model.vae, Classifier) else None  # M2's q(y|x)
        c = probs = None
        try:
            data = model.data()
            x, labels = model.test_set(data)
            if model.conditional:
                c = model.test_batch(data).c  # [Nt, P]: each example's own context
        except VaelabError as err:  # the data moved or needs a download: the rest still works
            x, labels, c = torch.zeros(0, *self.shape), None, None
            self.note = f"the run's test set could not be loaded ({err}); the map is empty"
        kl = None
        with torch.no_grad():
            if len(x):
                if self.classifier is not None:  # M2 encodes under the class its classifier predicts
                    probs = self._classify(x)  # [Nt, Y]
                    c = probs.argmax(-1).float()[:, None]  # [Nt, 1]
                ctx = None if c is None else model.context(c, n=len(x), what="the test set's context")
                q = model.encode(x) if self.classifier is not None else model.encode(x, c=ctx)  # q(z|x, c)
                means, stds = q.mean.cpu().double(), q.stddev.cpu().double()  # [Nt, D], the whole test set
                kl = kl_per_dimension(q, model.vae.prior_distribution(ctx))  # [Nt, D], or None if q or p does not factorise
                if self._hierarchy() is not None:  # a ladder: coordinates are the prior's noise (module docstring)
                    means, stds, kl = self._noise_view(q, ctx)
            else:
                means = stds = torch.zeros(0, model.latent_dim, dtype=torch.float64)
        self.dims = self._dimensions(means, None if kl is None else kl.cpu().double().mean(0))
        self.x = x[:map_points]  # [N, *x_shape] on the CPU: the examples on the map
        self.labels = None if labels is None else labels[:map_points]
        self.c = None if c is None else c[:map_points].cpu()  # [N, P]: the context each was encoded under
        self.probs = None if probs is None else probs[:map_points].cpu()  # [N, Y]: M2's q(y|x)
        self.means, self.stds = means[:map_points], stds[:map_points]  # [N, D]
        self.projection = Projection.fit(self.means.float())
        self.coords = self.projection.to_plane(self.means.float())  # [N, 2]
        self.background = self._background()

    @classmethod
    def from_run(cls, run: str | Path) -> Explorer:
        """Load a run folder on the CPU (reads only; nothing is ever written into it)."""
        return cls(load(run, device="cpu"))

    # --- precomputed summaries ----------------------------------------------------------
    def _dimensions(self, mu: Tensor, kl: Tensor | None) -> list[dict[str, Any]]:
        """Latent dimensions, most informative first: the test set's posterior means ``mu``
        ``[N, D]`` give the activity, ``kl`` ``[D]`` is the mean KL per dimension (None: not
        defined for this posterior and prior, then the order is by activity)."""
        d = self.model.latent_dim
        if len(mu) == 0:
            return [{"dim": i, "kl": None, "activity": None, "active": None} for i in range(d)]
        activity = mu.var(0) if len(mu) > 1 else torch.zeros(d, dtype=torch.float64)  # [D]
        key = activity if kl is None else kl
        out = []
        for i in sorted(range(d), key=lambda i: -float(key[i])):
            active = activity[i] >= INACTIVE_ACTIVITY and (kl is None or kl[i] >= INACTIVE_KL)
            out.append({"dim": i, "kl": None if kl is None else round(float(kl[i]), 4),
                        "activity": round(float(activity[i]), 4), "active": bool(active)})
        return out

    def _background(self) -> float | None:
        """Mean value of the test images' border pixels (to spot uploads with inverted colours)."""
        if not self.image or len(self.x) == 0:
            return None
        x = self.x
        border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], -1)
        return float(border.mean())

    def info(self) -> dict[str, Any]:
        """The model's summary for the page's header.

        Conditioning: ``classes`` are the names of the label's classes (the page's class
        selector; None without a label), ``covariates`` the continuous variables the page
        takes from a test example, ``conditional`` whether scoring x needs c (log p(x|c)),
        ``classifier`` whether the model predicts the class itself (M2)."""
        m, c = self.model, self.model.config
        metrics = read_metrics(m.run_dir)
        best = max((r for r in metrics if "val_elbo" in r), key=lambda r: r["val_elbo"], default=None)
        values = self.x.reshape(len(self.x), -1) if len(self.x) else torch.zeros(1, 1)
        return {
            "run": m.run_dir.name,
            "data": c.data,
            "data_kind": m.data_info.get("kind"),
            "x_shape": list(self.shape),
            "x_kind": "image" if self.image else "vector",
            "x_range": [round(float(values.min()), 4), round(float(values.max()), 4)],
            "latent_dim": m.latent_dim,
            "net": c.net,
            "hidden": list(c.hidden),
            "likelihood": c.likelihood,
            "posterior": c.posterior,
            "prior": c.prior,
            "dims_by": None if self.dims[0]["activity"] is None else ("activity" if self.dims[0]["kl"] is None else "kl"),
            "epochs": len(metrics),
            "best_val_elbo": None if best is None else round(float(best["val_elbo"]), 3),
            "n_map": len(self.x),
            "labelled": self.labels is not None,
            "note": self.note,
            "dims": self.dims,
            "projection": self.projection.to_json(),
            "log_px_k": LOG_PX_K,
            "family": m.spec.family,
            "conditional": m.conditional,
            "context": [v.name for v in self.variables],
            "classes": None if self.label is None else list(self.label.names()),
            "covariates": list(self.covariates),
            "classifier": self.classifier is not None,
        }

    def map(self) -> dict[str, Any]:
        """The test set's posterior means on the plane, with labels when known, and (a model
        with a context) the context each example was encoded under."""
        labels = None if self.labels is None else [int(v) for v in self.labels]
        return {
            "coords": _floats(self.coords, 4),
            "labels": labels,
            "classes": None if labels is None else sorted(set(labels)),
            "contexts": None if self.c is None else [self.describe(row) for row in self.c],
            "projection": self.projection.to_json(),
            "note": self.note,
        }

    # --- the context to decode under ------------------------------------------------------
    def _classes_text(self) -> str:
        """The label's classes for a message: ``0, 1, 2`` or ``0 (cat), 1 (dog)``."""
        assert self.label is not None
        names = self.label.names()
        shown = [n if n == str(i) else f"{i} ({n})" for i, n in enumerate(names[:LISTED_CLASSES])]
        more = f", … ({len(names)} in all)" if len(names) > LISTED_CLASSES else ""
        return ", ".join(shown) + more

    def class_id(self, value: Any) -> int:
        """A class of the label by name or by id (:meth:`~vaelab.context.Variable.class_id`), or a
        one-line VaelabError that lists the classes."""
        if self.label is None:
            raise VaelabError("this model does not condition on a class label; leave out 'label'")
        if isinstance(value, bool) or not isinstance(value, (int, str)) or len(str(value)) > 40:
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "…"
            raise VaelabError(f"class {shown} is not one of this model's classes; give a class id or name: "
                              f"{self._classes_text()}")
        return self.label.class_id(value)

    def context(self, label: Any = None, context_of: int | None = None, doing: str = "decodes") -> Tensor | None:
        """The context c ``[1, P]`` to decode, sample, interpolate and score under; None for a
        model that generates without one (the unconditional VAE).

        Args:
            label: the class, by id or name (:meth:`class_id`); it sets the label's column.
            context_of: a test example on the map whose context is taken (its covariates,
                and its class unless ``label`` is given). The page cannot set continuous
                covariates, so a model with covariates needs it.
            doing: what the context is for, in messages ("decodes", "scores an upload").
        """
        names = ", ".join(v.name for v in self.variables)
        if not self.variables:
            given = [f"'{k}'" for k, v in (("label", label), ("context_of", context_of)) if v is not None]
            if given:
                raise VaelabError(f"this model is unconditional: it {doing} without a class or context; leave out {' and '.join(given)}")
            return None
        if label is not None and self.label is None:
            raise VaelabError(f"this model conditions on {names}, not on a class label; leave out 'label' "
                              "and choose a test example whose context to use ('context_of')")
        if context_of is not None:
            if self.c is None or not 0 <= context_of < len(self.c):
                raise VaelabError(f"test example {context_of} does not exist: the map has {len(self.x)} examples "
                                  f"(0 to {len(self.x) - 1}), so its context cannot be used")
            row = self.c[context_of].clone()  # [P]
        elif self.covariates:
            raise VaelabError(f"this model conditions on {names}; {', '.join(self.covariates)} cannot be chosen here: "
                              f"give 'context_of', a test example (0 to {len(self.x) - 1}) whose values to use")
        elif label is None:
            raise VaelabError(f"this model {doing} given a class: give 'label', one of: {self._classes_text()}")
        else:
            row = torch.zeros(len(self.variables))
        if label is not None:
            assert self.label_column is not None
            row[self.label_column] = float(self.class_id(label))
        return row[None]  # [1, P]

    def describe(self, c: Tensor | None) -> dict[str, Any] | None:
        """One context row ``[P]`` (or ``[1, P]``) as ``{name: class name or number}``."""
        if c is None:
            return None
        row = c.reshape(-1)
        return {v.name: v.names()[int(row[j])] if v.kind == "categorical" else round(float(row[j]), 5)
                for j, v in enumerate(self.variables)}

    def _hierarchy(self) -> Any:
        """The ladder VAE's prior when the model is a hierarchy, else None."""
        from ..ladder import LadderPrior

        prior = self.model.vae.prior
        return prior if isinstance(prior, LadderPrior) else None

    def _noise_view(self, q: Any, ctx: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """A hierarchy's posterior means as prior noise eps ``[N, D]``, each unit's conditional
        spread in noise units (q's scale over the prior's, along the mean path) and its KL given
        the layers above ``[N, D]``."""
        from ..ladder import LadderPosterior, noise_view

        assert isinstance(q, LadderPosterior)
        eps, spread = noise_view(q, self._hierarchy(), self.model.vae.features(ctx))
        kl = torch.cat(q.layer_kl(q.sample((16,))), -1).mean(0)  # [N, D]
        return eps.cpu().double(), spread.cpu().double(), kl

    def _latent(self, v: Tensor, ctx: Tensor | None) -> Tensor:
        """The model's z for explorer coordinates ``v`` ``[N, D]`` (a hierarchy's are noise: colour them)."""
        prior = self._hierarchy()
        if prior is None:
            return v
        from ..ladder import colour

        return colour(prior, v.to(self.model.device), self.model.vae.features(ctx))

    def _coordinates(self, z: Tensor, ctx: Tensor | None) -> Tensor:
        """Explorer coordinates of the model's latents ``z`` ``[N, D]`` (the inverse of :meth:`_latent`)."""
        prior = self._hierarchy()
        if prior is None:
            return z
        from ..ladder import whiten

        return whiten(prior, z.to(self.model.device), self.model.vae.features(ctx))

    def _rows(self, c: Tensor | None, n: int) -> Tensor | None:
        """A context ``[1, P]`` repeated for ``n`` latents, checked, on the model's device."""
        return None if c is None else self.model.context(c.reshape(1, -1).expand(n, -1), n=n)

    def _classify(self, x: Tensor) -> Tensor:
        """M2's class probabilities q(y|x) ``[N, Y]``."""
        assert self.classifier is not None
        return self.classifier.classify(x.to(self.model.device)).probs.cpu()

    def _prediction(self, probs: Tensor) -> dict[str, Any]:
        """The classifier's most probable class of one example and its probability."""
        assert self.label is not None
        k = int(probs.argmax())
        return {"class": self.label.names()[k], "id": k, "probability": round(float(probs[k]), 4)}

    # --- decoding -------------------------------------------------------------------------
    @torch.no_grad()
    def _decoded(self, z: Tensor, c: Tensor | None = None) -> dict[str, Any]:
        """Latents ``[N, D]`` with their map coordinates and decoded means under context ``c`` ``[1, P]``."""
        z = z.float()
        ctx = self._rows(c, len(z))
        x = self.model.decode(self._latent(z, ctx), c=ctx).mean.cpu()  # [N, *x_shape]
        return {"z": _floats(z), "coords": _floats(self.projection.to_plane(z.cpu()), 4),
                "images": [render(xi, self.shape) for xi in x], "context": self.describe(c)}

    @torch.no_grad()
    def decode(self, z: Tensor, c: Tensor | None = None) -> dict[str, Any]:
        """The decoder's mean E[x|z, c] at one latent ``[D]`` (``c`` from :meth:`context`)."""
        out = self._decoded(z.reshape(1, -1), c)
        return {"z": out["z"][0], "coords": out["coords"][0], "image": out["images"][0], "context": out["context"]}

    def decode_point(self, point: Tensor, c: Tensor | None = None) -> dict[str, Any]:
        """Decode a point ``[2]`` of the map, lifted back into the latent space."""
        return self.decode(self.projection.lift(point.reshape(1, 2).float())[0], c)

    @torch.no_grad()
    def sample(self, n: int, seed: int | None = None, c: Tensor | None = None) -> dict[str, Any]:
        """``n`` fresh latents z ~ p(z|c) (p(z) without a context) and their decodings; a
        ``seed`` gives the same ones each time (without resetting the global RNG)."""
        ctx = self._rows(c, n)

        def draw() -> Tensor:
            p = self.model.vae.prior_distribution(ctx)  # batch [] or [n], event [D]
            return p.sample() if ctx is not None and tuple(p.batch_shape) == (n,) else p.sample((n,))  # [n, D]

        if seed is None:
            return self._decoded(self._coordinates(draw(), ctx), c)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            z = draw()
        return self._decoded(self._coordinates(z, ctx), c)

    def latent_of(self, index: int) -> Tensor:
        """The posterior mean of test example ``index`` ``[D]``."""
        if not 0 <= index < len(self.x):
            raise VaelabError(f"test example {index} does not exist: the map has {len(self.x)} examples (0 to {len(self.x) - 1})")
        return self.means[index].float()

    @torch.no_grad()
    def example(self, index: int) -> dict[str, Any]:
        """Test example ``index``: input, reconstruction (under its own context), posterior,
        place on the map; for M2 the classifier's prediction."""
        z = self.latent_of(index)
        c = None if self.c is None else self.c[index : index + 1]  # [1, P]
        ctx = self._rows(c, 1)
        rec = self.model.decode(self._latent(z[None], ctx), c=ctx).mean.cpu()[0]
        return {
            "index": index,
            "label": None if self.labels is None else int(self.labels[index]),
            "input": render(self.x[index], self.shape),
            "reconstruction": render(rec, self.shape),
            "z": _floats(z),
            "std": _floats(self.stds[index]),
            "coords": _floats(self.coords[index], 4),
            "context": self.describe(c),
            "predicted": None if self.probs is None else self._prediction(self.probs[index]),
        }

    @torch.no_grad()
    def interpolate(self, z0: Tensor, z1: Tensor, steps: int, method: Literal["linear", "spherical"],
                    c: Tensor | None = None) -> dict[str, Any]:
        """Decoded means along the linear or spherical path from ``z0`` to ``z1``, under ``c``."""
        return self._decoded(interpolate_latents(z0.float(), z1.float(), steps, method), c)

    # --- scoring an input of the user's own -----------------------------------------------
    @torch.no_grad()
    def score(self, x: np.ndarray, seed: int = 0, c: Tensor | None = None) -> dict[str, Any]:
        """Encode one example ``x_shape`` and score it: posterior, reconstruction, place on the
        map, ELBO and importance-sampled log p(x) with its standard error.

        A conditional model encodes and scores it under the context ``c`` ``[1, P]`` (from
        :meth:`context`): q(z|x, c) and log p(x|c). M2 needs no context: it encodes under
        the class its classifier predicts, which is reported with its probability, and its
        log p(x) sums over the classes.

        log p(x) uses K = 1000 samples drawn as 10 independent groups of 100. The estimate is
        log of the mean of all 1000 weights; its standard error is the delta-method one from
        the spread of the 10 group means of the weights, se(log p^) ~= sd(p^_g) / (sqrt(10) mean(p^_g)).
        The effective sample size of the 1000 normalised weights is reported too.
        """
        m = self.model
        xb = m.as_batch(x, "the uploaded example")  # [1, *x_shape], checked against the likelihood's support
        predicted = None
        if self.classifier is not None:
            if c is not None:
                raise VaelabError("this semi-supervised model scores an input without a class (its classifier "
                                  "predicts one); leave out 'label'")
            probs = self._classify(xb)[0]  # [Y]
            predicted = {**self._prediction(probs), "probabilities": [round(float(p), 4) for p in probs]}
            c = torch.tensor([[float(predicted["id"])]])  # [1, 1]: decode under the predicted class
        elif m.conditional and c is None:
            raise VaelabError("this model scores an input given its context: give 'label' (or 'context_of')")
        ctx = self._rows(c, 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self.classifier is not None:
                q = m.encode(xb)  # q(z|x, y), y the predicted class
                terms = m.elbo(xb, k=ELBO_K)
                rec_se = None
            else:
                q = m.vae.encode(xb, ctx)
                trace = m.vae.trace(xb, ELBO_K, ctx)
                terms = elbo(trace, m.config.kl)
                rec_se = round(float(trace.log_likelihood[:, 0].double().std() / math.sqrt(ELBO_K)), 3)
            scored_c = ctx if m.conditional else None
            groups = [m.log_likelihood(xb, k=LOG_PX_K // LOG_PX_GROUPS, c=scored_c) for _ in range(LOG_PX_GROUPS)]
        k_g = LOG_PX_K // LOG_PX_GROUPS
        log_g = torch.cat([g.per_example for g in groups]).double()  # [G] log mean of each group's weights
        ess_g = torch.cat([g.ess for g in groups]).double()  # [G]
        log_px = float(torch.logsumexp(log_g, 0) - math.log(len(groups)))
        w = torch.exp(log_g - log_g.max())  # group means of the weights, relative to the largest
        se = float(w.std() / (w.mean() * math.sqrt(len(groups))))
        sum_w = k_g * w  # each group's sum of weights (same common factor)
        ess = float(sum_w.sum() ** 2 / (sum_w**2 / ess_g).sum())  # (sum w)^2 / sum w^2 over all K
        khats = [g.khat for g in groups if g.khat is not None]  # Pareto k-hat of each group's weights
        khat = round(float(torch.cat(khats).double().median()), 2) if khats else None
        mean = q.mean[0].float()
        rec = m.decode(mean[None], c=ctx).mean.cpu()[0]
        std = q.stddev[0]
        if self._hierarchy() is not None:  # the explorer's coordinates: the prior's noise
            eps, spread, _ = self._noise_view(q, ctx)
            mean, std = eps[0].float(), spread[0]
        values = xb.reshape(-1)
        return {
            "input": render(xb[0].cpu(), self.shape),
            "reconstruction": render(rec, self.shape),
            "z": _floats(mean),
            "std": _floats(std),
            "coords": _floats(self.projection.to_plane(mean[None].cpu())[0], 4),
            "elbo": round(float(terms.elbo[0]), 3),
            "elbo_se": rec_se,
            "reconstruction_term": round(float(terms.reconstruction[0]), 3),
            "kl": round(float(terms.kl[0]), 3),
            "elbo_k": ELBO_K,
            "log_px": round(log_px, 3),
            "log_px_se": round(se, 3),
            "log_px_k": LOG_PX_K,
            "log_px_groups": len(groups),
            "ess": round(ess, 1),
            "khat": khat,  # median Pareto k-hat over the groups; above 0.7 the estimate is unreliable
            "binary": bool(((values == 0) | (values == 1)).all()),
            "likelihood": m.config.likelihood,
            "conditional": m.conditional,
            "context": self.describe(c),
            "predicted": predicted,
        }
