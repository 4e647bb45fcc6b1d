import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give BN layers non-trivial statistics and affine params, so parity tests can fail."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def record_calls(monkeypatch, module, name: str, note=lambda *a, **kw: True) -> list:
    """Wrap ``module.name`` (for the test's duration) so that each call appends
    ``note(*args, **kwargs)`` to the returned list and then runs the real function."""
    real = getattr(module, name)
    calls: list = []

    def wrapped(*args, **kwargs):
        calls.append(note(*args, **kwargs))
        return real(*args, **kwargs)
    monkeypatch.setattr(module, name, wrapped)
    return calls


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.fixture
def tmp_ckpt(tmp_path):
    return tmp_path


@pytest.fixture
def one_thread():
    """One intra-op thread for tests that start training runs: their timing stays stable when
    other processes share the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
