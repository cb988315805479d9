"""Make test helper modules in this folder importable (``from linear_gaussian import ...``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


# --- a hook on the optimizer's step, to interrupt or poison training at a chosen step --------

import pytest  # noqa: E402


@pytest.fixture
def adam_step_hook(monkeypatch: pytest.MonkeyPatch):
    """``adam_step_hook(hook)`` calls ``hook(n, optimizer)`` before the n-th ``Adam.step``
    (counting from 1) of the test; the hook may raise (e.g. KeyboardInterrupt) or edit the
    gradients. ``adam_step_hook(None)`` removes it."""
    import torch

    real_step = torch.optim.Adam.step
    calls = [0]

    def install(hook):
        if hook is None:
            monkeypatch.setattr(torch.optim.Adam, "step", real_step)
            return

        def step(self, *args, **kwargs):
            calls[0] += 1
            hook(calls[0], self)
            return real_step(self, *args, **kwargs)

        monkeypatch.setattr(torch.optim.Adam, "step", step)

    return install
