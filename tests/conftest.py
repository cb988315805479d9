"""Make test helper modules in this folder importable (``from linear_gaussian import ...``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


# --- a hook on the optimizer's step, to interrupt or poison training at a chosen step --------

import pytest  # noqa: E402


@pytest.fixture
def adam_step_hook():
    """``adam_step_hook(hook)`` calls ``hook(n, optimizer)`` before the n-th ``Adam.step``
    (counting from 1) of the test; the hook may raise (e.g. KeyboardInterrupt) or edit the
    gradients. ``adam_step_hook(None)`` removes it. (A global step pre-hook: optimizers run
    it on every step; vaelab's lean Adam then takes its ordinary, hooked path.)"""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    calls = [0]
    handles: list = []

    def install(hook):
        while handles:
            handles.pop().remove()
        if hook is None:
            return

        def pre_hook(optimizer, args, kwargs):
            calls[0] += 1
            hook(calls[0], optimizer)

        handles.append(register_optimizer_step_pre_hook(pre_hook))

    yield install
    install(None)


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module: tiny models run fastest so, and the machine is shared.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- the command line, refusing bad input ---------------------------------------------------


def refusal_checker(capsys):
    """``check(argv, *culprits)`` runs ``vaelab ARGV`` in-process and asserts that it is
    refused as vaelab refuses bad input: exit status 2, one line on stderr starting with
    ``error:`` that names every culprit, no traceback. Returns the line. (Also importable:
    ``from conftest import refusal_checker``.)"""
    from vaelab.cli import main

    def run(argv, *culprits):
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            main([str(a) for a in argv])
        captured = capsys.readouterr()
        assert info.value.code == 2, captured
        assert "Traceback" not in captured.err
        lines = captured.err.splitlines()
        assert len(lines) == 1, captured.err
        assert lines[0].startswith("error: "), lines[0]
        for culprit in culprits:
            assert culprit in lines[0], f"{culprit!r} not in {lines[0]!r}"
        return lines[0]

    return run


def run_cli(argv) -> int:
    """Run ``vaelab ARGV`` in-process (each argument made a string); its exit status, 0 for
    success. (Importable: ``from conftest import run_cli``.)"""
    from vaelab.cli import main

    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    return 0 if info.value.code is None else int(info.value.code)


@pytest.fixture
def refused(capsys):
    """:func:`refusal_checker` as a fixture: ``refused(argv, *culprits)``."""
    return refusal_checker(capsys)


# --- small data files shared by the training and robustness tests ---------------------------


@pytest.fixture(scope="module")
def binary_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 examples of 16 binary values (``x.npy``), independent fair coins."""
    import numpy as np

    path = tmp_path_factory.mktemp("data") / "x.npy"
    np.save(path, (np.random.default_rng(0).random((200, 16)) > 0.5).astype(np.float32))
    return path


def digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file below ``folder``, by relative path: what a command must leave unchanged."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def grey_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 examples of 16 values in [0, 1], four noisy prototypes (trained with dynamic binarization)."""
    import numpy as np

    path = tmp_path_factory.mktemp("data") / "grey.npy"
    rng = np.random.default_rng(0)
    centres = rng.random((4, 16))
    x = np.clip(centres[rng.integers(0, 4, 200)] + 0.1 * rng.normal(size=(200, 16)), 0, 1)
    np.save(path, x.astype(np.float32))
    return path


@pytest.fixture(scope="module")
def real_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 examples of 16 unbounded real values (for Gaussian and Laplace likelihoods)."""
    import numpy as np

    path = tmp_path_factory.mktemp("data") / "real.npy"
    np.save(path, (3 * np.random.default_rng(1).normal(size=(200, 16))).astype(np.float32))
    return path
