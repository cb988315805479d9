"""Several runs side by side: ``vaelab compare RUN RUN ...`` and ``vaelab runs [FOLDER]``.

:func:`read_run` reads what a run folder says about itself (``config.json``, ``model.json``,
``metrics.jsonl``, ``eval.json``, a sweep trial's ``sweep.json``) without loading its weights;
a folder that cannot be read is a :class:`RunInfo` with status ``damaged`` and the reason, not
an error. :func:`list_runs` does so for every run folder in a folder.

:func:`compare` puts the runs' headline figures in one table (from their ``eval.json``; a run
without one is listed without figures: ``vaelab eval RUN`` writes it) and adds **paired
differences** of -log p(x) between each run and the first, when they were tested on the same
examples. Two runs share a test set when their data, validation and test fractions, seed and
binarization of the test set agree (the split is drawn from the seed; a binarized test set
is drawn once with a fixed seed) and both score p(x) given the same conditioning variables;
this is checked from their configurations, and when log p(x) is estimated anew the test
examples themselves are compared (a checksum of the tensors).

With per-example values d_n = log p_ref(x_n) - log p_run(x_n) (the difference of -log p(x)),
the paired difference is mean(d) with standard error sd(d) / sqrt(N). It is usually far
smaller than the unpaired sqrt(SE_run^2 + SE_ref^2), because most of the spread of log p(x)
is between examples, which both models find easy or hard alike. The per-example values come
from both runs' ``eval.json`` when both hold them (``vaelab eval --per-example``) from the same
estimator and K; otherwise both are estimated anew by importance sampling from the encoder
with K samples under a fixed seed (nothing is written to the run folders).

:func:`write_compare_page` writes one self-contained HTML page: the table, the paired
differences, the settings in which the runs differ, and their training curves overlaid.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from .errors import VaelabError, printable
from .evaluation.settings import DEFAULTS
from .evaluation.summary import EvaluationSummary
from .run_folder import SWEEP, check_weights_fit, missing_record, read_metrics
from .training.checkpoint import unreadable

__all__ = ["RunInfo", "PairedDifference", "Comparison", "read_run", "list_runs", "compare", "format_runs",
           "format_comparison", "compare_page", "write_compare_page", "curves_figure", "RUN_FILES", "aligned",
           "display_width"]

RUN_FILES = ("config.json", "model.json", "metrics.jsonl", "model.safetensors", "checkpoint.safetensors", SWEEP)
# the settings that decide which examples form the test set (besides the binarization)
_TEST_SET_KEYS = ("data", "val_fraction", "test_fraction", "seed")


@dataclass(frozen=True)
class RunInfo:
    """What a run folder says about itself.

    ``status`` is ``ok``, ``damaged`` (``problem`` says why), ``unfinished`` (a run that
    trained its epochs but was interrupted after its last checkpoint, while its final outputs
    were written: ``problem`` names those missing and ``vaelab train --resume RUN``, which makes
    them), or a sweep trial's ``pruned``, ``failed`` or ``running`` (from its ``sweep.json``).
    ``epochs`` is the number of epochs trained, ``seconds`` their wall time (the sum over
    ``metrics.jsonl``), ``evaluation`` the ``eval.json`` (None when there is none)."""

    path: Path
    status: str = "ok"
    problem: str | None = None
    config: dict[str, Any] | None = None
    data_info: dict[str, Any] | None = None
    model: str | None = None
    metrics: tuple[dict[str, Any], ...] = ()
    evaluation: EvaluationSummary | None = None
    created: str | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def data(self) -> str | None:
        return None if self.config is None else str(self.config.get("data"))

    @property
    def epochs(self) -> int:
        return len(self.metrics)

    @property
    def seconds(self) -> float | None:
        values = [r.get("seconds") for r in self.metrics]
        return float(sum(values)) if values and all(isinstance(v, (int, float)) for v in values) else None

    @property
    def best_val_elbo(self) -> float | None:
        values = [r["val_elbo"] for r in self.metrics if isinstance(r.get("val_elbo"), (int, float))]
        return max(values) if values else None

    def headline(self) -> str:
        """The run's figure of merit in words: test -log p(x) with its SE, else the best validation ELBO."""
        from .report.html import fmt

        ev = self.evaluation
        if ev is not None and ev.nll is not None:
            se = "" if ev.log_px_stderr is None else f" ± {fmt(ev.log_px_stderr)}"
            return f"-log p(x{ev.given}) {fmt(ev.nll)}{se} (test)"
        if ev is not None:
            return f"ELBO {fmt(ev.elbo)} (test)"
        if self.best_val_elbo is not None:
            return f"ELBO {fmt(self.best_val_elbo)} (validation)"
        return "–"

    def to_dict(self) -> dict[str, Any]:
        ev = self.evaluation
        return {"path": str(self.path), "name": self.name, "status": self.status, "problem": self.problem,
                "data": self.data, "model": self.model, "epochs": self.epochs, "seconds": self.seconds,
                "created": self.created, "best_val_elbo": self.best_val_elbo, "headline": self.headline(),
                "evaluation": None if ev is None else _headline_figures(ev)}


def _headline_figures(ev: EvaluationSummary) -> dict[str, Any]:
    """The figures the comparison table shows, from an evaluation (nats per example)."""
    return {"n": ev.n, "nll": ev.nll, "nll_stderr": ev.log_px_stderr, "k": ev.k, "estimator": ev.estimator,
            "elbo": ev.elbo, "elbo_stderr": ev.elbo_stderr, "kl": ev.kl, "kl_stderr": ev.kl_stderr,
            "distortion": ev.distortion, "distortion_stderr": ev.distortion_stderr,
            "active_units": None if ev.latents is None else ev.latents.active_units,
            "latent_dim": None if ev.latents is None else ev.latents.latent_dim,
            "bits_per_dim": ev.bits_per_dim, "conditional_on": list(ev.conditional_on)}


def _json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise VaelabError(f"{path.name} is not readable JSON ({str(err).splitlines()[0]})") from None


def _model_words(spec: Any) -> str:
    """``"mlp[400] gaussian/normal/bernoulli D=20"``: net and widths, posterior/prior/likelihood,
    latent size (and ``| label`` for the conditioning)."""
    hidden = spec.net.options.get("hidden")
    net = spec.net.name + ("" if hidden is None else f"[{','.join(map(str, hidden))}]")
    dims = ",".join(map(str, getattr(spec, "latent_dims", ()))) or spec.latent_dim  # a hierarchy: its layers
    words = f"{net} {spec.posterior.name}/{spec.prior.name}/{spec.likelihood.name} D={dims}"
    if spec.family != "vae":
        words = f"{spec.family}: {words}"
    if spec.context:
        words += f" | {','.join(v.name for v in spec.context)}"
    return words


def read_run(path: str | Path) -> RunInfo:
    """Read a run folder's files (not its weights); a folder that cannot be read is ``damaged``."""
    from .spec import ModelSpec

    p = Path(path)
    if not p.is_dir():
        raise VaelabError(f"run folder '{p}' not found")
    created = None
    if (p / "config.json").exists():
        created = _dt.datetime.fromtimestamp((p / "config.json").stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    status, problem = "ok", None
    config = data_info = evaluation = None
    model = None
    metrics: list[dict[str, Any]] = []
    try:
        if not (p / "config.json").is_file():
            raise VaelabError("no config.json (not a finished start of 'vaelab train')")
        doc = _json_file(p / "config.json")
        if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict) or not isinstance(doc.get("data"), dict):
            raise VaelabError("config.json lacks its 'config' and 'data' tables")
        config, data_info = doc["config"], doc["data"]
        if (p / "model.json").is_file():
            model = _model_words(ModelSpec.from_dict(_json_file(p / "model.json"), source="model.json"))
        metrics = read_metrics(p)  # checked record by record (a damaged line is named)
        if (p / "eval.json").is_file():
            evaluation = EvaluationSummary.from_dict(_json_file(p / "eval.json"), source="eval.json")
        if not (p / "model.safetensors").exists():
            raise VaelabError(missing_record(p, "model.safetensors", "no trained weights",
                                             " (model.safetensors): no epoch finished"))
        weights_problem = unreadable(p / "model.safetensors")
        if weights_problem:
            raise VaelabError(f"model.safetensors {weights_problem}")
        try:  # weights of another model copied over (another --hidden): named, not "ok"
            check_weights_fit(p)
        except (VaelabError, OSError, UnicodeDecodeError):
            raise
        except Exception as err:  # noqa: BLE001 - a model that cannot be built is a damaged run, not a crash
            raise VaelabError(f"its model could not be built from model.json ({type(err).__name__}: {err})") from None
    except (VaelabError, OSError, UnicodeDecodeError) as err:
        status, problem = "damaged", str(err)
    if status == "ok" and (p / SWEEP).is_file():
        try:
            state = _json_file(p / SWEEP).get("state")
        except (VaelabError, AttributeError):
            state = None
        if state in ("pruned", "failed", "running"):
            status = state
    if status == "ok":
        missing = _unfinished_end(p)
        if missing:
            status = "unfinished"
            problem = (f"interrupted after its last checkpoint, while its end was written: "
                       f"{_missing_words(p, missing)}; 'vaelab train --resume {p}' makes "
                       f"{'it' if len(missing) == 1 else 'them'} without training")
    return RunInfo(path=p, status=status, problem=problem, config=config, data_info=data_info, model=model,
                   metrics=tuple(metrics), evaluation=evaluation, created=created)


def _trained_by_vaelab_train(run_dir: Path) -> bool:
    """Whether the run's last training session was the command ``vaelab train`` (``python -m
    vaelab train``, under torchrun too), as its ``manifest.json`` records the command line: a run
    whose end writes every figure and, when ``eval_k`` > 0, ``eval.json``. A run of the Python
    API (``vaelab.train``: figures unless ``figures=False``, ``eval.json`` only with an
    ``evaluate``), of a sweep, or without a manifest (vaelab 0.1.0) is not known to want them."""
    from .manifest import read_manifest

    try:
        doc = read_manifest(run_dir)
    except VaelabError:
        return False
    if doc is None:
        return False
    sessions = [doc, *(s for s in doc.get("resumed", []) if isinstance(s, dict))]  # each resume adds its session
    argv = sessions[-1].get("argv")
    if not isinstance(argv, list) or len(argv) < 2 or not all(isinstance(a, str) for a in argv):
        return False
    program = Path(argv[0])
    return argv[1] == "train" and (program.stem == "vaelab" or (program.name == "__main__.py"
                                                                 and program.parent.name == "vaelab"))


def _unfinished_end(run_dir: Path) -> list[str]:
    """The final outputs a run that trained its epochs lacks (``metrics.jsonl`` or its last
    records, figures, ``eval.json``): it was interrupted after its last checkpoint, while they were
    written, and ``vaelab train --resume`` makes them (:func:`vaelab.runs._missing_outputs`, which
    decides it there). Only what the run's end was to write is asked for: the figures when the
    run drew any or was trained by ``vaelab train`` (the Python API's ``figures=False`` draws
    none), ``eval.json`` when it was trained by ``vaelab train`` with ``eval_k`` > 0
    (:func:`_trained_by_vaelab_train`). Empty for a run still short of its epochs, and when its
    records cannot be read (a damaged one is named as such elsewhere)."""
    from .build import build_model
    from .run_folder import read_config, read_run_config, read_spec
    from .runs import _FIGURES, _MANIFOLD, _check_model_size, _missing_outputs
    from .training.checkpoint import check_state, read_metadata
    from .training.loop import CHECKPOINT

    checkpoint = run_dir / CHECKPOINT
    if not checkpoint.is_file():
        return []
    try:
        state = check_state(read_metadata(checkpoint, "checkpoint"), checkpoint)
        config = read_config(run_dir)
        if state["epoch"] < config.epochs and state.get("stopped") != "early-stopping":
            return []  # not finished: --resume trains on
        spec = read_spec(run_dir, config, read_run_config(run_dir / "config.json")["data"].get("shape"))
        with torch.random.fork_rng(devices=[]):
            try:
                with torch.device("meta"):  # shapes only: whether the run draws the latent manifold
                    vae = build_model(spec)
            except (RuntimeError, NotImplementedError, TypeError, ValueError):  # (an IAF, a VampPrior)
                _check_model_size(config, spec, torch.device("cpu"), factor=2)
                vae = build_model(spec)
        cli = _trained_by_vaelab_train(run_dir)
        figures = cli or any((run_dir / name).exists() for name in (*_FIGURES, _MANIFOLD))
        return _missing_outputs(run_dir, vae, spec, config, state, figures=figures, evaluates=cli)
    except (VaelabError, OSError, UnicodeDecodeError, KeyError, TypeError, ValueError):
        return []


def _missing_words(run_dir: Path, missing: Sequence[str]) -> str:
    """``curves.png and eval.json missing`` (``the last records of metrics.jsonl`` when it is there)."""
    names = [f"the last records of {n}" if n == "metrics.jsonl" and (run_dir / n).exists() else n for n in missing]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"{listed} missing"


def list_runs(folder: str | Path = "runs") -> list[RunInfo]:
    """Every run folder directly inside ``folder`` (any sub-folder holding a run's file), by name."""
    f = Path(folder)
    if not f.is_dir():
        raise VaelabError(f"folder '{f}' not found; give the folder that holds run folders (--out of 'vaelab train')")
    if (f / "config.json").is_file() and not any((d / "config.json").is_file() for d in f.iterdir() if d.is_dir()):
        raise VaelabError(f"'{f}' is a run folder itself; list the folder that holds it: vaelab runs {f.parent}")
    subs = sorted((d for d in f.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)
    return [read_run(d) for d in subs if any((d / name).exists() for name in RUN_FILES)]


def display_width(text: str) -> int:
    """The columns ``text`` takes on a terminal: East Asian wide and full-width characters take
    two, combining marks and zero-width characters none, every other character one."""
    import unicodedata

    width = 0
    for char in text:
        if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows of cells as lines of aligned columns, two spaces apart. Each cell is shown as the
    terminal will show it (control characters escaped, :func:`~vaelab.errors.printable`: a run
    folder named ``x\x1b[31m`` is 12 characters wide there, not 8) and padded by its width on
    the terminal (:func:`display_width`), so a name with escapes or wide characters keeps the
    columns after it in line."""
    cells = [[printable(str(c)) for c in row] for row in rows]
    n = max((len(row) for row in cells), default=0)
    widths = [max((display_width(row[i]) for row in cells if i < len(row)), default=0) for i in range(n)]
    return ["  ".join(c + " " * (w - display_width(c)) for c, w in zip(row, widths)).rstrip() for row in cells]


def format_runs(runs: Sequence[RunInfo]) -> str:
    """``vaelab runs``: one line per run folder."""
    if not runs:
        return "no run folders"
    head = ("run", "status", "data", "model", "epochs", "headline", "date")
    rows = [(r.name, r.status, r.data or "–", r.model or "–", str(r.epochs), r.headline(), r.created or "–")
            for r in runs]
    lines = aligned([head, *rows])
    for r in runs:
        if r.problem:
            lines.append(f"{r.name}: {r.status}: {r.problem}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the comparison


@dataclass(frozen=True)
class PairedDifference:
    """-log p(x) of ``run`` minus that of ``reference`` on the same ``n`` test examples
    (negative: ``run`` is better), with its paired standard error, and the unpaired one
    (sqrt(SE_run^2 + SE_ref^2)) for contrast. ``source`` says where the per-example values came from."""

    run: str
    reference: str
    n: int
    difference: float
    stderr: float
    unpaired_stderr: float
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run, "reference": self.reference, "n": self.n, "difference": self.difference,
                "stderr": self.stderr, "unpaired_stderr": self.unpaired_stderr, "source": self.source}


@dataclass(frozen=True)
class Comparison:
    """The runs (the first is the reference), their paired differences, and why a run is not paired."""

    runs: tuple[RunInfo, ...]
    pairs: tuple[PairedDifference, ...] = ()
    not_paired: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.runs[0].name, "units": "nats per example",
                "runs": [r.to_dict() for r in self.runs], "paired_differences": [p.to_dict() for p in self.pairs],
                "not_paired": dict(self.not_paired), "differing_settings": differing_settings(self.runs)}


def split_key(run: RunInfo) -> dict[str, Any]:
    """What decides a run's test examples and what its log p(x) is of: the data, split
    fractions and seed, whether the test set is binarized, and the conditioning variables."""
    assert run.config is not None and run.data_info is not None
    key = {k: run.config.get(k) for k in _TEST_SET_KEYS}
    key["binarized"] = bool(run.data_info.get("binarized"))
    key["condition_on"] = [] if run.config.get("semi_supervised") else list(run.config.get("condition_on") or [])
    return key


def _why_not_shared(a: RunInfo, b: RunInfo) -> str | None:
    ka, kb = split_key(a), split_key(b)
    diff = [f"{k} {kb[k]!r} vs {ka[k]!r}" for k in ka if ka[k] != kb[k]]
    return None if not diff else "another test set (" + ", ".join(diff) + ")"


def _stored_per_example(run: RunInfo) -> tuple[np.ndarray, str] | None:
    """Per-example log p(x) of the run's own test set from its eval.json, with (estimator, K)."""
    ev = run.evaluation
    if ev is None or ev.per_example is None or ev.per_example.log_px is None or run.data_info is None:
        return None
    if ev.data is not None and not ev.data.endswith("(test split)"):
        return None  # an evaluation of other data
    if ev.n != run.data_info.get("n_test"):
        return None
    return np.asarray(ev.per_example.log_px, dtype=np.float64), f"{ev.estimator or 'is'}, K={ev.k}"


def _estimate(run: RunInfo, k: int, seed: int) -> tuple[np.ndarray, str]:
    """Per-example log p(x) of the run's test set, estimated now (encoder IS, K samples, seed),
    and a checksum of the test examples it scored."""
    from .runs import load

    model = load(run.path)
    batch = model.test_batch()
    digest = hashlib.sha1()
    for i in range(0, len(batch.x), 4096):  # a block at a time (rows left on disk by --backed too): the same digest
        digest.update(batch.x[i : i + 4096].detach().cpu().numpy().tobytes())
    if batch.c is not None:
        digest.update(batch.c.detach().cpu().numpy().tobytes())
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        ll = model.log_likelihood(batch.x, k=k, c=batch.c)
    return ll.per_example.double().cpu().numpy(), digest.hexdigest()


def paired_difference(run_values: np.ndarray, ref_values: np.ndarray) -> tuple[float, float, float]:
    """Mean and standard error of d_n = log p_ref(x_n) - log p_run(x_n) (the difference of
    -log p(x)), and the unpaired error sqrt(SE_run^2 + SE_ref^2); both ``[N]`` on the same examples."""
    n = len(run_values)
    if n != len(ref_values) or n < 2:
        raise VaelabError(f"paired differences need the same examples (at least 2) in both runs, got {n} and "
                          f"{len(ref_values)}")
    d = ref_values - run_values
    unpaired = math.sqrt(run_values.var(ddof=1) / n + ref_values.var(ddof=1) / n)
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(n)), unpaired


def compare(runs: Sequence[str | Path], *, k: int = DEFAULTS.k, seed: int = 0, paired: bool = True,
            log: Any = lambda message: None) -> Comparison:
    """Compare run folders; the first is the reference of the paired differences.

    Args:
        runs: two or more run folders.
        k, seed: importance samples and seed when per-example log p(x) must be estimated anew.
        paired: compute paired differences (False: the table only).
    """
    if len(runs) < 2:
        raise VaelabError("compare needs at least two run folders")
    paths = [Path(r) for r in runs]
    seen = [p.resolve() for p in paths]
    if len(set(seen)) != len(seen):
        raise VaelabError("a run folder is given twice; give each run once")
    if k < 1:
        raise VaelabError(f"--k must be >= 1, got {k}")
    infos = tuple(read_run(p) for p in paths)
    for info in infos:
        if info.status == "damaged":
            raise VaelabError(f"run folder '{info.path}' is damaged ({info.problem}); leave it out")
    pairs: list[PairedDifference] = []
    not_paired: dict[str, str] = {}
    if paired:
        ref = infos[0]
        shared = []
        for info in infos[1:]:
            why = _why_not_shared(ref, info)
            if why is None:
                shared.append(info)
            else:
                not_paired[info.name] = why
        stored = {i.name: _stored_per_example(i) for i in (ref, *shared)}
        fresh: dict[str, tuple[np.ndarray, str]] = {}
        for info in shared:
            a, b = stored[ref.name], stored[info.name]
            if a is not None and b is not None and a[1] == b[1]:
                values, ref_values, source = b[0], a[0], f"eval.json per-example values ({a[1]})"
            else:
                for run in (ref, info):
                    if run.name not in fresh:
                        log(f"estimating log p(x) of {run.name}'s test set (K={k}, seed {seed})")
                        fresh[run.name] = _estimate(run, k, seed)
                if fresh[info.name][1] != fresh[ref.name][1]:
                    not_paired[info.name] = "another test set (its test examples differ from the reference's)"
                    continue
                values, ref_values = fresh[info.name][0], fresh[ref.name][0]
                source = f"estimated now (encoder IS, K={k}, seed {seed})"
            mean, se, unpaired = paired_difference(values, ref_values)
            pairs.append(PairedDifference(run=info.name, reference=ref.name, n=len(values), difference=mean,
                                          stderr=se, unpaired_stderr=unpaired, source=source))
    return Comparison(runs=infos, pairs=tuple(pairs), not_paired=not_paired)


def differing_settings(runs: Sequence[RunInfo]) -> dict[str, list[Any]]:
    """The settings (config.json) in which the runs differ, each run's value in order."""
    configs = [r.config or {} for r in runs]
    keys = sorted({k for c in configs for k in c} - {"name", "out"})
    return {k: [c.get(k) for c in configs] for k in keys if len({json.dumps(c.get(k)) for c in configs}) > 1}


def _signed(value: float) -> str:
    """A difference with its sign, 3 decimals (%g style when huge: see :func:`vaelab.report.html.fmt`)."""
    from .report.html import fmt

    return ("+" if value >= 0 else "") + fmt(float(value), 3)


def _pm(value: float | None, se: float | None) -> str:
    from .report.html import pm

    return pm(value, se)


def _table(comp: Comparison) -> tuple[list[str], list[list[str]]]:
    """The headline table: header and one row of strings per run."""
    from .report.html import fmt

    given = ""
    for r in comp.runs:
        if r.evaluation is not None and r.evaluation.given:
            given = "|c"
    head = ["run", "data", "model", "epochs", "time (s)", f"-log p(x{given})", "ELBO", "KL (rate)", "distortion",
            "active units", "bits/dim"]
    rows = []
    for r in comp.runs:
        ev = r.evaluation
        row = [r.name, r.data or "–", r.model or "–", str(r.epochs), "–" if r.seconds is None else fmt(float(r.seconds), 1)]
        if ev is None:
            row += ["– (no eval.json)", "–", "–", "–", "–", "–"]
        else:
            units = "–" if ev.latents is None else f"{ev.latents.active_units}/{ev.latents.latent_dim}"
            row += [_pm(ev.nll, ev.log_px_stderr), _pm(ev.elbo, ev.elbo_stderr), _pm(ev.kl, ev.kl_stderr),
                    _pm(ev.distortion, ev.distortion_stderr), units, fmt(ev.bits_per_dim, 4)]
        rows.append(row)
    return head, rows


def format_comparison(comp: Comparison) -> str:
    """``vaelab compare``'s text: the headline table, then the paired differences."""
    from .report.html import fmt

    head, rows = _table(comp)
    lines = aligned([head, *rows])
    lines.append("(nats per example on each run's test set, ± standard error over its examples; time: the training "
                 "epochs' wall time)")
    if comp.pairs or comp.not_paired:
        lines.append("")
        lines.append(f"paired differences of -log p(x) against {comp.runs[0].name} (negative: better than it):")
    for p in comp.pairs:
        lines.append(f"  {p.run}: {_signed(p.difference)} ± {fmt(p.stderr, 3)} nats (paired, {p.n} examples; unpaired SE "
                     f"{fmt(p.unpaired_stderr, 3)}; {p.source})")
    for name, why in comp.not_paired.items():
        lines.append(f"  {name}: not paired: {why}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the page


def curves_figure(runs: Sequence[RunInfo]) -> bytes:
    """The runs' training curves overlaid: validation ELBO (solid) and training ELBO (dashed) by epoch (PNG)."""
    from .plots import plain_text, save_png

    fig = Figure(figsize=(11.0, 4.0), dpi=100, layout="constrained")
    ax_val, ax_train = fig.subplots(1, 2, sharey=True)
    for i, r in enumerate(runs):
        color = f"C{i % 10}"
        for ax, key, style in ((ax_val, "val_elbo", "-"), (ax_train, "train_elbo", "--")):
            pts = [(m.get("epoch", j + 1), m[key]) for j, m in enumerate(r.metrics)
                   if isinstance(m.get(key), (int, float)) and math.isfinite(m[key])]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, style, color=color, marker="o" if len(xs) <= 30 else None, markersize=3,
                        label=plain_text(r.name))
    for ax, title in ((ax_val, "validation ELBO"), (ax_train, "training ELBO")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    ax_val.set_ylabel("nats per example")
    ax_val.legend(fontsize=8)
    return save_png(fig)


def compare_page(comp: Comparison) -> str:
    """The comparison as one self-contained HTML page (styles inline, the figure a data URI)."""
    from .report.html import CSS, esc, fmt, section

    head, rows = _table(comp)
    cells = "".join("<tr>" + "".join(f'<td{"" if i < 3 else " class=num"}>{esc(c)}</td>' for i, c in enumerate(row))
                    + "</tr>" for row in rows)
    table = (f'<div style="overflow-x:auto"><table id="runs-table"><tr>{"".join(f"<th>{esc(h)}</th>" for h in head)}</tr>{cells}</table></div>'
             '<p class="explain">Nats per example on each run\'s test set (from its eval.json), ± the standard error '
             "over the test examples. KL is the rate, distortion -E_q[log p(x|z)]; active units have a posterior "
             "mean that varies with x; time is the wall time of the training epochs. A run without eval.json has "
             "no figures: <code>vaelab eval RUN</code>.</p>")
    body = [section("table", "Runs", table)]
    ref = comp.runs[0].name
    if comp.pairs or comp.not_paired:
        prow = "".join(f'<tr><td>{esc(p.run)}</td><td class="num">{_signed(p.difference)} ± {fmt(p.stderr, 3)}</td>'
                       f'<td class="num">{fmt(p.unpaired_stderr, 3)}</td><td class="num">{p.n}</td>'
                       f'<td class="what">{esc(p.source)}</td></tr>' for p in comp.pairs)
        prow += "".join(f'<tr><td>{esc(name)}</td><td colspan="4" class="what">not paired: {esc(why)}</td></tr>'
                        for name, why in comp.not_paired.items())
        body.append(section("paired", "Paired differences",
                            f'<p class="explain">-log p(x) of each run minus that of <code>{esc(ref)}</code> on the '
                            "same test examples (negative: better), with the standard error of the per-example "
                            "differences; the unpaired error, which ignores that both runs score the same examples, "
                            "is shown for contrast.</p>"
                            '<table id="paired-table"><tr><th>run</th><th>difference (nats)</th><th>unpaired SE</th>'
                            f"<th>examples</th><th>per-example values</th></tr>{prow}</table>"))
    settings = differing_settings(comp.runs)
    if settings:
        srow = "".join(f"<tr><td>{esc(k)}</td>" + "".join(f"<td>{esc(json.dumps(v))}</td>" for v in values) + "</tr>"
                       for k, values in settings.items())
        names = "".join(f"<th>{esc(r.name)}</th>" for r in comp.runs)
        body.append(section("settings", "Settings that differ",
                            f'<table id="settings-table"><tr><th>setting</th>{names}</tr>{srow}</table>'))
    uri = "data:image/png;base64," + base64.b64encode(curves_figure(comp.runs)).decode("ascii")
    body.append(section("curves", "Training curves",
                        f'<figure id="figure-curves"><img src="{uri}" alt="training curves of every run">'
                        "<figcaption>ELBO per epoch, nats per example; one colour per run</figcaption></figure>"))
    title = f"vaelab compare: {len(comp.runs)} runs"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>'
            f'<header><div class="wrap"><h1>{esc(title)}</h1><div class="sub">reference (first run): '
            f'{esc(ref)}; nats per example</div></div></header>'
            f'<main class="wrap">{"".join(body)}</main></body></html>')


def write_compare_page(comp: Comparison, path: str | Path) -> Path:
    """Write :func:`compare_page` to ``path`` (atomically)."""
    from .training.checkpoint import atomic_write_text

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, compare_page(comp))
    return p
