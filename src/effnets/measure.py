"""Measured cost of a model: latency, throughput and peak memory, for inference and training,
on CPU or CUDA, at any batch and input size (``effnets profile NAME --measure``).

Timing: ``warmup`` untimed calls, then ``iters`` timed calls (CUDA synchronised around each);
latency is the median (robust on a shared machine) with the 10th/90th percentiles alongside.
Throughput = batch / median latency.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` during one call.  On CPU, the
PyTorch profiler's allocation events (``profile_memory=True``) over one call: every allocation
and free of the CPU allocator, in time order; the running sum's maximum is the peak above what
was already allocated, to which the bytes already resident (parameters, buffers, gradients,
optimizer state, the input) are added.  This is the CPU analogue of ``max_memory_allocated``:
tensor memory, not process RSS (no allocator caching, no Python objects)."""
from __future__ import annotations

import contextlib
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError


@dataclass
class Measurement:
    kind: str  # "inference" or "training"
    device: str
    batch_size: int
    input_size: tuple[int, int]
    latency_ms: float  # median per call (per optimizer step in training)
    latency_p10_ms: float
    latency_p90_ms: float
    images_per_s: float
    peak_memory_bytes: int | None
    threads: int
    iters: int
    notes: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    def __str__(self) -> str:
        mem = f"{self.peak_memory_bytes / 2**20:.1f} MiB" if self.peak_memory_bytes is not None else "-"
        h, w = self.input_size
        return (f"{self.kind:<9} {self.device} batch {self.batch_size} @ {h}x{w}: {self.latency_ms:.2f} ms "
                f"(p10 {self.latency_p10_ms:.2f}, p90 {self.latency_p90_ms:.2f}), "
                f"{self.images_per_s:.1f} images/s, peak memory {mem}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device: torch.device, warmup: int = 3, iters: int = 10) -> list[float]:
    """Seconds per call of ``fn`` for ``iters`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t0)
    return out


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def tensor_bytes(*objs) -> int:
    """Bytes of distinct tensor storages reachable in modules / optimizers / tensors."""
    seen: dict[int, int] = {}

    def add(t):
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            try:
                s = t.untyped_storage()
                seen[s.data_ptr()] = max(seen.get(s.data_ptr(), 0), s.nbytes())
            except (RuntimeError, NotImplementedError):  # mkldnn / opaque tensors
                seen[id(t)] = t.numel() * t.element_size()

    for o in objs:
        if isinstance(o, nn.Module):
            for t in list(o.parameters()) + list(o.buffers()):
                add(t)
                if getattr(t, "grad", None) is not None:
                    add(t.grad)
        elif isinstance(o, torch.optim.Optimizer):
            for st in o.state.values():
                for v in st.values():
                    add(v)
        else:
            add(o)
    return sum(seen.values())


@contextlib.contextmanager
def _quiet_fd2():
    """File descriptor 2 on /dev/null for the block: whatever C code or Python writes to stderr
    there is dropped, so it wraps only the profiler's start and stop, never the measured call."""
    try:
        saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except OSError:  # no fd 2 to redirect: say nothing, do nothing
        yield
        return
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def peak_memory(fn: Callable[[], object], device: torch.device, resident: int = 0) -> int:
    """Peak tensor bytes while running ``fn`` once (see the module docstring)."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _sync(device)
        return int(torch.cuda.max_memory_allocated(device))
    from torch.profiler import ProfilerActivity, profile
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_fd2():  # kineto prints a "USDT: ... profiler_start" line to the C stderr
        prof.__enter__()
    try:
        fn()
    finally:
        with _quiet_fd2():
            prof.__exit__(None, None, None)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
              and e.device_type() == torch.autograd.DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return resident + peak


def _input(model: nn.Module, batch: int, hw: tuple[int, int], device, dtype, channels_last: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, getattr(model, "in_chans", 3), *hw, generator=g).to(device=device, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _hw(size) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or min(hw) < 1:
        raise ConfigError(f"input size must be a positive int or (height, width), got {size!r}")
    return hw


def measure_inference(model: nn.Module, input_size=224, batch_size: int = 1, device="cpu", *,
                      dtype: torch.dtype = torch.float32, channels_last: bool = True, warmup: int = 3,
                      iters: int = 10, memory: bool = True) -> Measurement:
    """Forward passes of ``model`` (put in eval mode, under ``torch.inference_mode``)."""
    device = torch.device(device)
    hw = _hw(input_size)
    model.eval()
    x = _input(model, batch_size, hw, device, dtype, channels_last)
    with torch.inference_mode():
        ts = time_calls(lambda: model(x), device, warmup, iters)
        peak = peak_memory(lambda: model(x), device, tensor_bytes(model, x)) if memory else None
    med = statistics.median(ts)
    return Measurement("inference", str(device), batch_size, hw, med * 1e3, _pct(ts, 0.1) * 1e3, _pct(ts, 0.9) * 1e3,
                       batch_size / med, peak, torch.get_num_threads(), iters)


def training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer,
                  amp_dtype: torch.dtype | None = None) -> Callable[[], None]:
    """One optimizer step as a callable: forward, cross-entropy, backward, ``optimizer.step()``,
    ``zero_grad(set_to_none=True)`` (what :func:`measure_training` and the benchmarks time)."""
    def step():
        ctx = torch.autocast(x.device.type, dtype=amp_dtype) if amp_dtype is not None else _null()
        with ctx:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def measure_training(model: nn.Module, input_size=224, batch_size: int = 16, device="cpu", *,
                     channels_last: bool = True, warmup: int = 2, iters: int = 5, memory: bool = True,
                     optimizer: torch.optim.Optimizer | None = None, amp_dtype: torch.dtype | None = None
                     ) -> Measurement:
    """Full optimizer steps (forward, cross-entropy, backward, SGD-momentum step, zero_grad
    with set_to_none) of ``model`` in train mode; ``model`` is updated."""
    device = torch.device(device)
    hw = _hw(input_size)
    model.train()
    x = _input(model, batch_size, hw, device, torch.float32, channels_last)
    num_classes = getattr(model, "num_classes", None) or 1000
    y = torch.randint(0, num_classes, (batch_size,), generator=torch.Generator().manual_seed(0)).to(device)
    opt = optimizer or torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    step = training_step(model, x, y, opt, amp_dtype)
    ts = time_calls(step, device, warmup, iters)
    peak = peak_memory(step, device, tensor_bytes(model, opt, x, y)) if memory else None
    med = statistics.median(ts)
    return Measurement("training", str(device), batch_size, hw, med * 1e3, _pct(ts, 0.1) * 1e3, _pct(ts, 0.9) * 1e3,
                       batch_size / med, peak, torch.get_num_threads(), iters)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


OPTIMIZED = ("fp32", "bf16", "bf16_mixed", "int8_dynamic")  # what measure(optimized=...) can add


def measure(model_or_name, input_size=None, batch_size: int = 1, device="cpu", *, train_batch_size: int | None = None,
            training: bool = True, iters: int = 10, warmup: int = 3, optimized: Iterable[str] = (),
            **overrides) -> list[Measurement]:
    """Inference (and, if ``training``, training) measurements for a model or registered name.
    ``optimized``: also measure inference of ``effnets.optimize(model, dtype=...)`` for each of
    ``"fp32"``, ``"bf16"``, ``"bf16_mixed"``, ``"int8_dynamic"`` (kind ``"inference, optimize fp32"`` and so on;
    CPU only: the optimized models are CPU inference models)."""
    from .factory import create_model
    if isinstance(model_or_name, str):
        model = create_model(model_or_name, **overrides)
    else:
        model = model_or_name
    if input_size is None:
        card = getattr(model, "card", None)
        input_size = card.test_size if card is not None else 224
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA is not available on this machine")
    optimized = list(optimized)
    for kind in optimized:
        if kind not in OPTIMIZED:
            raise ConfigError(f"optimized: unknown variant {kind!r}; choose from {', '.join(OPTIMIZED)}")
    if optimized and device.type != "cpu":
        raise ConfigError(f"optimized= measures CPU inference models; drop it or use device='cpu' (got {device})")
    model = model.to(device).to(memory_format=torch.channels_last)
    out = [measure_inference(model, input_size, batch_size, device, iters=iters, warmup=warmup)]
    if optimized:
        from .optimize import optimize
        for kind in optimized:  # before training: optimize works on a copy of the untrained model
            m = measure_inference(optimize(model, dtype=None if kind == "fp32" else kind), input_size, batch_size,
                                  device, iters=iters, warmup=warmup)
            m.kind = f"inference, optimize {kind}"
            out.append(m)
    if training:
        out.append(measure_training(model, input_size, train_batch_size or batch_size, device,
                                    iters=max(2, iters // 2), warmup=max(1, warmup // 2)))
    return out


__all__ = ["Measurement", "measure", "measure_inference", "measure_training", "peak_memory", "time_calls",
           "tensor_bytes", "training_step"]
