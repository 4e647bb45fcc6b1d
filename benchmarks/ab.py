"""In-process A/B timings behind docs/benchmarks.md items 29-37, 39 and 41 (not a test: prints figures).

``python benchmarks/ab.py linear``: effnets' GEMM (``FastLinear``, what ``optimize`` runs for a
linear layer) against ``F.linear`` alone, for 1-512 rows of 1280 -> 1000 and 768 -> 3072 (the
weight hot in cache), then in whole optimized models: the classifier's forward swapped between the
two in one process, best of 6 rounds of 20 forwards (B0, MobileNetV3-L, V2-S at batch 1 and 8;
B0 with ``int8_dynamic``, where "F.linear" is the float product with the dequantized weight).

``python benchmarks/ab.py bf16``: ``optimize(dtype="bf16_mixed")`` against the fp32 ``optimize``
model (B0, MobileNetV3-L, V2-S, ResNet-RS-50, ViT-Ti/16 at batch 1 and 8, random weights, the two
models in turns, best of 5 rounds): docs/benchmarks.md item 31.

``python benchmarks/ab.py dense``: stems and stride-2 convs on the GEMM over gathered patches
against oneDNN's conv, switched in turns in one optimized model (V2-S, B0, ResNet-RS-50 at batch 1
and 8): docs/benchmarks.md item 33.

``python benchmarks/ab.py item33``: two optimized models of the same weights in turns, one as
``optimize`` makes it now and one as it did before item 33 (no patch GEMM, no page-fault counts,
stems without kept buffers), each with its own per-layer choices.

``python benchmarks/ab.py residual``: each block's residual sum in its last 1x1 conv's GEMM
epilogue against a pass of its own, switched in turns in one optimized model (B0, MobileNetV3-L,
MobileNetV2, V2-S at batch 1 and 8): item 34.

``python benchmarks/ab.py prefetch``: the fp32 1x1 GEMM's prefetch of the next tile's rows (item
36) switched on and off in turns (``eff_pw_set_prefetch_bytes``: 8 MiB or never): large GEMMs
alone at batch 1 and 8, then the GEMM calls inside optimized models at batch 8 (each call timed by
a wrapper around the native function, summed per shape, min of ``--rounds`` forwards), and the
whole forwards.

``python benchmarks/ab.py gelu``: two optimized models of the same weights in turns, one as
``optimize`` makes it now (the exact GELU in effnets' epilogues: depthwise, 1x1 and patch
GEMMs, and a transformer MLP's fc1; ``(B, T, C)`` linears on the GEMM) and one as before item 37
(GELU convs on oneDNN, GELU a pass of its own, ``(B, T, C)`` linears on ``F.linear``): ViT-Ti/16,
ViT-S/16, CoAtNet-0 at batch 1 and 8, best of 8 rounds.

``python benchmarks/ab.py int8bound``: how far ``int8_dynamic`` can get from fp32 on B0 (the 2x
target of issue 5): both optimized models' forwards, then each native conv call of one forward
(fused expand + depthwise, depthwise, 1x1 GEMMs fp32 and int8, patch GEMM; captured, then replayed)
timed as it is, with its SiLUs identity, and for the depthwise ones with one tap instead of K x K
(the multiply-adds gone, the GEMM, ring and activations kept), and the forward with every native
call a no-op (what Python, PyTorch's own ops and oneDNN's convs take); prints the int8 model's
ratio were its depthwise taps and SiLUs free.

``python benchmarks/ab.py lib OTHER.so``: the same optimized models with the native library
swapped between the current build and another one (``kernels._LIB``; build the other by
checking out its ``native.c`` and importing ``effnets.kernels``: the builds are cached under
~/.cache/effnets/kernels, one file per source), best of 6 rounds, ``--dtype int8_dynamic`` or
fp32 (default), ``--models`` (default efficientnet_b0): items 30 and 32.

``python benchmarks/ab.py wstream``: the fused Winograd kernel's streaming stores (item 39) at
their default threshold and never (``eff_wino_set_stream_bytes``): first five of V2-S's and
ResNet-RS-50's layer shapes alone, then switched in one optimized model for each forward, ``--pairs`` forwards each way in alternating order (V2-S and ResNet-RS-50
at batch 8 and 1); prints the geometric mean of the paired ratios with two standard errors (the
whole-forward differences are a few percent, the host's drift more: pairs cancel the drift).

``python benchmarks/ab.py project``: a Fused-MBConv block's expand conv (fused Winograd) and project
conv (+ shortcut) as one pass (``kernels.winograd_pointwise_fused``, item 41) against the two calls:
V2-S's stride-1 shapes alone in turns, then ``--pairs`` paired forwards of whole optimized models
with ``FusedConvAct.forward_projected`` on and off (V2-S at batch 8 and 1), and the buffers one
forward leaves kept in each mode (``release_buffers``)."""
from __future__ import annotations

import argparse
import ctypes
import math
import re
import statistics
import sys
import time
import types

import torch
import torch.nn.functional as F

import effnets
from effnets import kernels as K
from effnets.optimize import FastLinear, FusedConvAct, release_buffers

MODELS = {"efficientnet_b0": 224, "mobilenet_v3_large": 224, "efficientnetv2_s": 300}
SIZES = {**MODELS, "resnet_rs_50": 160, "vit_tiny_16": 224, "vit_small_16": 224, "coatnet_0": 224}  # the input size of each model named here


def best_of(variants: dict, model, x: torch.Tensor, rounds: int = 6, calls: int = 20) -> dict[str, float]:
    """ms per forward of ``model(x)`` under each variant (a function that switches the model to
    it), the variants taking turns, best round each."""
    best = {k: float("inf") for k in variants}
    with torch.inference_mode():
        for switch in variants.values():
            switch()
            model(x)
        for _ in range(rounds):
            for name, switch in variants.items():
                switch()
                model(x)
                t = time.perf_counter()
                for _ in range(calls):
                    model(x)
                best[name] = min(best[name], (time.perf_counter() - t) / calls * 1e3)
    return best


def in_turns(models: dict, x: torch.Tensor, rounds: int, calls: int) -> dict[str, float]:
    """:func:`best_of` for several models (name -> model) instead of variants of one."""
    holder = types.SimpleNamespace(model=None)
    return best_of({k: (lambda m=m: setattr(holder, "model", m)) for k, m in models.items()},
                   lambda inp: holder.model(inp), x, rounds=rounds, calls=calls)


def alone() -> None:
    print("alone (weight hot), median of 50 calls:")
    for k, n in ((1280, 1000), (768, 3072)):
        lin = FastLinear(torch.nn.Linear(k, n)).eval()
        for rows in (1, 2, 4, 8, 16, 32, 128, 512):
            x = torch.randn(rows, k)
            ts = {}
            with torch.inference_mode():
                for name, fn in (("F.linear", lambda: F.linear(x, lin.weight, lin.bias)), ("GEMM", lambda: lin(x))):
                    for _ in range(5):
                        fn()
                    t = []
                    for _ in range(50):
                        t0 = time.perf_counter()
                        fn()
                        t.append(time.perf_counter() - t0)
                    ts[name] = sorted(t)[len(t) // 2] * 1e6
            print(f"  {rows:4d} x {k} -> {n}: F.linear {ts['F.linear']:8.1f} us, GEMM {ts['GEMM']:8.1f} us, "
                  f"x{ts['F.linear'] / ts['GEMM']:.2f}")


def linear_ab() -> None:
    alone()
    print("in the model (classifier forward swapped), ms per forward:")
    for name, dtype in [(m, None) for m in MODELS] + [("efficientnet_b0", "int8_dynamic")]:
        model = effnets.optimize(effnets.create_model(name).eval(), dtype=dtype)
        lin = model.classifier
        plain = lambda x, lin=lin: F.linear(x, lin.weight, lin.bias)
        variants = {"F.linear": lambda: setattr(lin, "forward", plain),
                    "FastLinear": lambda: lin.__dict__.pop("forward", None)}
        for batch in (1, 8):
            x = torch.randn(batch, 3, MODELS[name], MODELS[name]).contiguous(memory_format=torch.channels_last)
            t = best_of(variants, model, x)
            print(f"  {name} {dtype or 'fp32'} b{batch}: F.linear {t['F.linear']:.2f}, FastLinear "
                  f"{t['FastLinear']:.2f} ({t['F.linear'] / t['FastLinear']:.3f}x)", flush=True)
        variants["FastLinear"]()


def lib_ab(other: str, dtype: str | None, names: list[str]) -> None:
    new = K.library()
    old = ctypes.CDLL(other)
    for fn in set(re.findall(r"lib\.(eff_[a-z0-9_]+)\.argtypes", open(K.__file__).read())):
        if hasattr(old, fn):
            getattr(old, fn).argtypes, getattr(old, fn).restype = getattr(new, fn).argtypes, getattr(new, fn).restype
    print(f"ms per forward, this build ({new._name}) against {other}:")
    try:
        for name in names:
            model = effnets.optimize(effnets.create_model(name).eval(), dtype=dtype)
            size = SIZES.get(name, 224)
            for batch in (1, 8):
                x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
                t = best_of({"other": lambda: setattr(K, "_LIB", old), "this": lambda: setattr(K, "_LIB", new)},
                            model, x, calls=max(2, 16 // batch))
                print(f"  {name} {dtype or 'fp32'} b{batch}: other {t['other']:.2f}, this {t['this']:.2f} "
                      f"({t['other'] / t['this']:.3f}x)", flush=True)
    finally:
        K._LIB = new


def bf16_ab() -> None:
    """optimize(dtype="bf16_mixed") (1x1 convs and linears on the bf16 GEMM) against the fp32
    optimize model, same random weights, in turns."""
    if not K.bf16_fast():
        print("this CPU has no AVX512-BF16: dtype='bf16_mixed' would run its plain path")
        return
    print("ms per forward, fp32 optimize vs bf16_mixed (best of 5 rounds in turns):")
    for name, size in SIZES.items():
        model = effnets.create_model(name).eval()
        models = {"fp32": effnets.optimize(model), "bf16_mixed": effnets.optimize(model, dtype="bf16_mixed")}
        for batch in (1, 8):
            x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
            t = in_turns(models, x, rounds=5, calls=max(2, 16 // batch))
            print(f"  {name} b{batch}: fp32 {t['fp32']:.2f}, bf16_mixed {t['bf16_mixed']:.2f} "
                  f"({t['fp32'] / t['bf16_mixed']:.2f}x)", flush=True)


def dense_ab(names: list[str], batches: list[int]) -> None:
    """The GEMM over gathered patches (docs/benchmarks.md item 33) against oneDNN's conv for the
    layers it serves (stems, stride-2 3x3 convs), in one optimized model: after its own choices
    are made, every such layer is switched between the two routes in turns (``cv_act`` off: the
    layer runs oneDNN's conv as before the patch GEMM existed)."""
    print("ms per forward, dense convs on oneDNN vs on the patch GEMM (best of 8 rounds in turns):")
    for name in names:
        size = SIZES.get(name, 224)
        model = effnets.optimize(effnets.create_model(name).eval())
        dense = [(m, m.cv_act) for m in model.modules() if isinstance(m, FusedConvAct) and m.cv_act]
        for batch in batches:
            x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                for _ in range(4):
                    model(x)
            chose = sum(v is True for m, _ in dense for k, v in m._wino.items() if k[0] == "cv" and k[1][0] == batch)
            for m, _ in dense:  # ours on every such layer for the "patch" side, no fault counts pending
                m._wino = {k: k[0] == "cv" or v for k, v in m._wino.items() if k[0] != "faults"}

            def route(on: bool) -> None:
                for m, act in dense:
                    m.cv_act = act if on else None
            t = best_of({"onednn": lambda: route(False), "patch": lambda: route(True)}, model, x, rounds=8,
                        calls=max(2, 16 // batch))
            route(True)
            print(f"  {name} b{batch} ({len(dense)} layers, {chose} on ours by their own choice): "
                  f"oneDNN {t['onednn']:.2f}, patch GEMM {t['patch']:.2f} ({t['onednn'] / t['patch']:.3f}x)", flush=True)


def item33_off(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (fresh from ``optimize``) as optimize made it before item 33: dense convs on oneDNN,
    no page-fault counts after a layer's choice, stem convs without kept buffers."""
    for name, m in model.named_modules():
        if isinstance(m, FusedConvAct):
            m.cv_act = None
            if name in ("stem", "stem.pool"):  # the stem convs fuse_modules now lets keep their buffers
                m.reuse_output = False
            choose = m._choose_native

            def no_counts(kind, x, args, m=m, choose=choose):
                chosen = choose(kind, x, args)
                m._wino.pop(("faults", tuple(x.shape)), None)
                return chosen
            m._choose_native = no_counts
    return model


def item33_ab(names: list[str], batches: list[int]) -> None:
    """Two optimized models of the same weights in turns, each with its own per-layer choices:
    optimize() as it is and as it was before item 33 (item33_off)."""
    print("ms per forward, optimize() before item 33 vs now (two models in turns, best of 8 rounds):")
    for name in names:
        size = SIZES.get(name, 224)
        base = effnets.create_model(name).eval()
        models = {"before": item33_off(effnets.optimize(base)), "now": effnets.optimize(base)}
        for batch in batches:
            x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
            t = in_turns(models, x, rounds=8, calls=5 if batch > 1 else 20)
            print(f"  {name} b{batch}: before {t['before']:.2f}, now {t['now']:.2f} ({t['before'] / t['now']:.3f}x)",
                  flush=True)


def residual_ab(names: list[str], batches: list[int]) -> None:
    """Each block's residual sum in its last 1x1 conv's GEMM epilogue (item 34) switched on and
    off in turns in one optimized model (the same per-layer choices on both sides)."""
    print("ms per forward, residual sums in their own pass vs in the GEMM epilogue (one model, in turns, "
          "best of 25 rounds):")
    for name in names:
        size = SIZES.get(name, 224)
        model = effnets.optimize(effnets.create_model(name).eval())
        blocks = [m for m in model.modules() if getattr(m, "residual_in_branch", False)]

        def switch(on: bool):
            return lambda: [setattr(b, "residual_in_branch", on) for b in blocks]

        for batch in batches:
            x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
            t = best_of({"apart": switch(False), "epilogue": switch(True)}, model, x, rounds=25,
                        calls=5 if batch > 1 else 20)
            print(f"  {name} b{batch} ({len(blocks)} blocks): apart {t['apart']:.2f}, epilogue {t['epilogue']:.2f} "
                  f"({t['apart'] / t['epilogue']:.3f}x)", flush=True)


def _linear_2d_only(self, x: torch.Tensor) -> torch.Tensor:
    """FastLinear.forward as before item 37: only 2-D inputs on the GEMM."""
    return FastLinear.forward(self, x) if x.ndim == 2 else F.linear(x, self.weight, self.bias)


def gelu_off(base: torch.nn.Module) -> torch.nn.Module:
    """``optimize(base)`` as before item 37: no GELU on effnets' kernels, (B, T, C) linears on F.linear."""
    opt = sys.modules["effnets.optimize"]
    native_act = opt._native_act
    opt._native_act = lambda attr, scalars, algorithm=None: None if attr == "gelu" else native_act(attr, scalars)
    try:
        model = effnets.optimize(base)
    finally:
        opt._native_act = native_act
    for m in model.modules():
        if type(m) is FastLinear:
            m.forward = types.MethodType(_linear_2d_only, m)
    return model


def gelu_ab(names: list[str], batches: list[int]) -> None:
    print("ms per forward, optimize() before item 37 vs now (two models in turns, best of 8 rounds):")
    for name in names:
        base = effnets.create_model(name).eval()
        models = {"before": gelu_off(base), "now": effnets.optimize(base)}
        for batch in batches:
            x = torch.randn(batch, 3, SIZES[name], SIZES[name]).contiguous(memory_format=torch.channels_last)
            t = in_turns(models, x, rounds=8, calls=3 if batch > 1 else 10)
            print(f"  {name} b{batch}: before {t['before']:.2f}, now {t['now']:.2f} ({t['before'] / t['now']:.3f}x)",
                  flush=True)


PF_ON, PF_OFF = 8 << 20, 1 << 62  # eff_pw_set_prefetch_bytes: the default, and never


def _min_of_turns(fns: dict, rounds: int, calls: int) -> dict[str, float]:
    """Seconds per call of each function (name -> fn), the functions taking turns, best round."""
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            fn()
            t = time.perf_counter()
            for _ in range(calls):
                fn()
            best[k] = min(best[k], (time.perf_counter() - t) / calls)
    return best


class _NoopLibrary:
    """The native library with every forward kernel a no-op returning 0 (outputs left as they are)."""

    def __init__(self, lib):
        self._lib = lib

    def __getattr__(self, name: str):
        if name.startswith("eff_") and name.endswith(("_fwd", "_gates", "_gate", "_fused", "_in", "_out")):
            return lambda *args: 0
        return getattr(self._lib, name)


# the native calls int8_bound splits: name -> (index of the activation code, of the taps, of the padding)
_SPLIT_CALLS = {"expand_depthwise_into": ((3, 10), 4, 9), "depthwise_into": ((7,), 1, 6),
                "pointwise_into": ((4,), None, None), "pointwise_q8_into": ((4,), None, None),
                "conv_into": ((7,), None, None)}


def _variant(args: tuple, spec: tuple, what: str) -> tuple:
    """A captured call's arguments with its SiLUs made identity ("act") or its depthwise taps cut
    to one, padding 0 (the same output shape for odd kernels; "taps")."""
    acts, taps, pad = spec
    a = list(args)
    if what == "act":
        for i in acts:
            a[i] = 0 if a[i] == K.DW_ACT_CODES["silu"] else a[i]
    else:
        a[taps], a[pad] = a[taps][:1].contiguous(), (0, 0)
    return tuple(a)


def int8_bound(batches: list[int], rounds: int) -> None:
    best = lambda fn, calls=3: min(_min_of_turns({"f": fn}, rounds, calls).values()) * 1e3  # noqa: E731
    base = effnets.create_model("efficientnet_b0").eval()
    originals = {name: getattr(K, name) for name in _SPLIT_CALLS}
    for batch in batches:
        x = torch.randn(batch, 3, 224, 224)
        ms = {}
        for dtype in ("fp32", "int8_dynamic"):
            model = effnets.optimize(base, dtype=None if dtype == "fp32" else dtype)
            calls = []
            with torch.inference_mode():
                model(x)  # the per-layer choices are made here, before the capture
                whole = best(lambda: model(x))
                for name, fn in originals.items():
                    setattr(K, name, lambda *a, _n=name, _f=fn, **kw: calls.append((_n, a, kw)) or _f(*a, **kw))
                try:
                    model(x)
                finally:
                    for name, fn in originals.items():
                        setattr(K, name, fn)
                native = taps = silu = 0.0
                for name, args, kw in calls:
                    fn, spec = originals[name], _SPLIT_CALLS[name]
                    t = best(lambda: fn(*args, **kw), 5)
                    native += t
                    if any(args[i] == K.DW_ACT_CODES["silu"] for i in spec[0]):
                        silu += t - best(lambda: fn(*_variant(args, spec, "act"), **kw), 5)
                    if spec[1] is not None:
                        taps += t - best(lambda: fn(*_variant(args, spec, "taps"), **kw), 5)
                lib = K._LIB
                K._LIB = _NoopLibrary(lib)
                try:
                    rest = best(lambda: model(x), 20)
                finally:
                    K._LIB = lib
            ms[dtype] = whole
            fused = sum(c[0] == "expand_depthwise_into" for c in calls)
            print(f"b{batch} {dtype}: forward {whole:.2f} ms; {len(calls)} native conv calls ({fused} fused expand + "
                  f"depthwise) {native:.2f} ms, of it depthwise taps {taps:.2f} and SiLUs {silu:.2f}; native calls "
                  f"as no-ops {rest:.2f} ms", flush=True)
            if dtype == "int8_dynamic":
                print(f"  int8 / fp32 {ms['fp32'] / whole:.2f}x; with the depthwise taps and SiLUs free "
                      f"{ms['fp32'] / (whole - taps - silu):.2f}x", flush=True)


def prefetch_ab(names: list[str], rounds: int) -> None:
    lib = K.library()
    pf = lambda on: lib.eff_pw_set_prefetch_bytes(PF_ON if on else PF_OFF)  # noqa: E731
    try:
        print("fp32 GEMMs alone, GMAC/s with the prefetch off / on (best of 4 rounds of 15 calls, in turns):")
        for ci, co, h in [(144, 24, 56), (96, 24, 112), (256, 64, 38), (192, 48, 75), (960, 160, 19)]:
            w, bias = torch.randn(co, ci, 1, 1) / ci ** 0.5, torch.randn(co)
            panels = K.pointwise_weight(w)
            line = f"  {ci} -> {co} on {h}x{h}:"
            for b in (1, 8):
                x = torch.randn(b, ci, h, h).contiguous(memory_format=torch.channels_last)
                out = torch.empty(b, co, h, h).contiguous(memory_format=torch.channels_last)
                run = lambda: K.pointwise_into(x, panels, bias, out, 1)  # noqa: E731
                with torch.inference_mode():
                    t = _min_of_turns({"off": lambda: (pf(False), run()), "on": lambda: (pf(True), run())}, 4, 15)
                g = b * h * h * ci * co / 1e9
                line += f"  b{b} {g / t['off']:.0f} / {g / t['on']:.0f} ({t['off'] / t['on']:.3f}x)"
            print(line, flush=True)
        fn = "eff_pw_fwd"
        print(f"in optimized models, batch 8: {fn} per shape (M, K, N), ms off -> on "
              f"(min of {rounds} forwards each way, in turns):")
        orig = getattr(lib, fn)
        spent: dict = {}

        def timed(*a):
            t = time.perf_counter()
            r = orig(*a)
            key = (a[7], a[8], a[9])  # M, K, N
            spent[key] = spent.get(key, 0.0) + time.perf_counter() - t
            return r

        setattr(lib, fn, timed)
        try:
            for name in names:
                torch.manual_seed(0)
                model = effnets.optimize(effnets.create_model(name).eval())
                size = SIZES.get(name, 224)
                x = torch.randn(8, 3, size, size).contiguous(memory_format=torch.channels_last)
                calls = {True: {}, False: {}}
                whole = {True: float("inf"), False: float("inf")}
                with torch.inference_mode():
                    model(x), model(x)
                    for r in range(rounds):
                        for on in ((True, False) if r % 2 else (False, True)):
                            pf(on)
                            spent.clear()
                            t = time.perf_counter()
                            model(x)
                            whole[on] = min(whole[on], time.perf_counter() - t)
                            for k, v in spent.items():
                                calls[on][k] = min(calls[on].get(k, float("inf")), v)
                off, on = sum(calls[False].values()), sum(calls[True].values())
                print(f"  {name}: all {fn} calls {off * 1e3:.1f} -> {on * 1e3:.1f} ms ({off / on:.3f}x); whole "
                      f"forward {whole[False] * 1e3:.1f} -> {whole[True] * 1e3:.1f} ms "
                      f"({whole[False] / whole[True]:.3f}x)", flush=True)
                for k in sorted(calls[False], key=lambda k: -calls[False][k])[:6]:
                    m_, k_, n_ = k
                    print(f"    {m_} x {k_} -> {n_} ({m_ * k_ * 4 / 2 ** 20:.1f} MiB in): "
                          f"{calls[False][k] * 1e3:.2f} -> {calls[True][k] * 1e3:.2f} ms "
                          f"({calls[False][k] / calls[True][k]:.3f}x)", flush=True)
        finally:
            setattr(lib, fn, orig)
    finally:
        pf(True)


def _paired_forwards(name: str, batch: int, pairs: int, modes: dict) -> tuple[torch.nn.Module, torch.Tensor]:
    """One optimized model (seeded random weights) run ``pairs`` times in each of two modes (name
    -> a function that switches to it), the two in alternating order; prints the geometric mean
    of the paired ratios (first mode / second) with two standard errors and the fastest forward
    of each (whole-forward differences of a few percent are below the host's drift: pairs cancel it).
    Returns the model (left in the second mode) and its input."""
    (a, set_a), (b, set_b) = modes.items()
    torch.manual_seed(0)
    model = effnets.optimize(effnets.create_model(name).eval())
    size = SIZES.get(name, 224)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    times = {a: [], b: []}
    with torch.inference_mode():
        for k in (a, b, a, b):  # each mode's timed choices made before the pairs
            modes[k]()
            model(x)
        for i in range(pairs):
            for k in ((a, b) if i % 2 else (b, a)):
                modes[k]()
                t = time.perf_counter()
                model(x)
                times[k].append(time.perf_counter() - t)
    set_b()
    logs = [math.log(p / q) for p, q in zip(times[a], times[b])]
    mean, err = statistics.mean(logs), 2 * statistics.stdev(logs) / math.sqrt(len(logs))
    print(f"  {name} b{batch}: {a} / {b} {math.exp(mean):.3f}x ({math.exp(mean - err):.3f}-{math.exp(mean + err):.3f}); "
          f"fastest forward {min(times[a]) * 1e3:.1f} -> {min(times[b]) * 1e3:.1f} ms", flush=True)
    return model, x


def wstream_ab(names: list[str], batches: list[int], pairs: int) -> None:
    lib = K.library()
    default = lib.eff_wino_set_stream_bytes(1 << 62)
    lib.eff_wino_set_stream_bytes(default)
    print(f"Winograd outputs of at least {default / 2**20:.1f} MiB streamed (default) against never")
    try:
        print("layers alone (fused kernel, SiLU; ms, never -> default, best of 6 rounds of 4 calls, in turns):")
        for n, ci, h, co in [(8, 48, 75, 192), (8, 64, 38, 256), (8, 24, 150, 24), (8, 32, 80, 64), (1, 48, 75, 192)]:
            x = torch.randn(n, ci, h, h).contiguous(memory_format=torch.channels_last)
            w, b = torch.randn(co, ci, 3, 3) * 0.05, torch.randn(co)
            panels = K.winograd_panels(K.winograd_weight(w))
            out = torch.empty(n, co, h, h).contiguous(memory_format=torch.channels_last)
            run = lambda: K.winograd_conv3x3_fused(x, panels, b, (1, 1), "silu", out=out)  # noqa: E731
            t = _min_of_turns({k: (lambda v=v: (lib.eff_wino_set_stream_bytes(v), run()))
                               for k, v in (("never", 1 << 62), ("default", default))}, 6, 4)
            print(f"  b{n} {ci} -> {co} on {h}x{h} ({n * co * h * h * 4 / 2**20:.1f} MiB out): "
                  f"{t['never'] * 1e3:.2f} -> {t['default'] * 1e3:.2f}", flush=True)
        print(f"whole models, {pairs} paired forwards each:")
        for batch in batches:
            for name in names:
                _paired_forwards(name, batch, pairs, {
                    "never": lambda: lib.eff_wino_set_stream_bytes(1 << 62),
                    "default": lambda: lib.eff_wino_set_stream_bytes(default)})
    finally:
        lib.eff_wino_set_stream_bytes(default)


def project_ab(names: list[str], batches: list[int], pairs: int) -> None:
    """Fused-MBConv's expand conv (Winograd) and project conv as one pass (item 41) against the two
    calls: V2-S's stride-1 shapes alone, then switched in whole optimized models."""
    print("layers alone (3x3 + SiLU by the fused Winograd kernel, 1x1 + residual on the GEMM; ms, apart -> one "
          "pass, best of 6 rounds of 4 calls, in turns):")
    for n, ci, h, cm in [(8, 48, 75, 192), (8, 64, 38, 256), (1, 48, 75, 192), (1, 64, 38, 256)]:
        x = torch.randn(n, ci, h, h).contiguous(memory_format=torch.channels_last)
        up, b = K.winograd_panels(K.winograd_weight(torch.randn(cm, ci, 3, 3) * 0.05)), torch.randn(cm)
        pw, b2 = K.pointwise_weight(torch.randn(ci, cm, 1, 1) * 0.05), torch.randn(ci)
        res = torch.randn(n, ci, h, h).contiguous(memory_format=torch.channels_last)
        mid = torch.empty(n, cm, h, h).contiguous(memory_format=torch.channels_last)
        out = torch.empty(n, ci, h, h).contiguous(memory_format=torch.channels_last)
        t = _min_of_turns({
            "apart": lambda: K.pointwise_into(K.winograd_conv3x3_fused(x, up, b, (1, 1), "silu", out=mid), pw, b2, out,
                                              K.DW_ACT_CODES["identity"], residual=res),
            "one pass": lambda: K.winograd_pointwise_fused(x, up, b, "silu", pw, b2, out, residual=res)}, 6, 4)
        print(f"  b{n} {ci} -> {cm} -> {ci} on {h}x{h} ({n * cm * h * h * 4 / 2**20:.1f} MiB expanded): "
              f"{t['apart'] * 1e3:.2f} -> {t['one pass'] * 1e3:.2f}", flush=True)
    print(f"whole models, {pairs} paired forwards each (apart: FusedConvAct.forward_projected off):")
    fused = FusedConvAct.forward_projected
    try:
        for batch in batches:
            for name in names:
                modes = {"apart": lambda: setattr(FusedConvAct, "forward_projected", lambda *a: None),
                         "one pass": lambda: setattr(FusedConvAct, "forward_projected", fused)}
                model, x = _paired_forwards(name, batch, pairs, modes)
                kept = {}
                with torch.inference_mode():
                    for k, switch in modes.items():  # the buffers one forward leaves kept, in each mode
                        release_buffers(model)
                        switch()
                        model(x)
                        kept[k] = release_buffers(model) / 2**20
                print(f"    kept buffers after a forward: {kept['apart']:.0f} MiB apart, {kept['one pass']:.0f} one pass",
                      flush=True)
    finally:
        FusedConvAct.forward_projected = fused


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    sub.add_parser("linear", help="FastLinear against F.linear")
    sub.add_parser("bf16", help="optimize(dtype='bf16_mixed') against the fp32 optimize model")
    dense = sub.add_parser("dense", help="stems and stride-2 convs: the patch GEMM against oneDNN's conv")
    dense.add_argument("--models", nargs="+", default=["efficientnetv2_s", "efficientnet_b0", "resnet_rs_50"])
    dense.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    item33 = sub.add_parser("item33", help="optimize() now against optimize() before item 33, two models in turns")
    item33.add_argument("--models", nargs="+", default=["efficientnetv2_s", "resnet_rs_50", "efficientnet_b0",
                                                         "mobilenet_v3_large"])
    item33.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    residual = sub.add_parser("residual", help="residual sums in the GEMM epilogue or apart, one model in turns")
    residual.add_argument("--models", nargs="+", default=["efficientnet_b0", "mobilenet_v3_large", "mobilenet_v2",
                                                           "efficientnetv2_s"])
    residual.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    pref = sub.add_parser("prefetch", help="the fp32 1x1 GEMM's row prefetch on and off, in turns")
    pref.add_argument("--models", nargs="+", default=["efficientnetv2_s", "efficientnet_b0", "resnet_rs_50"])
    pref.add_argument("--rounds", type=int, default=6)
    gelu = sub.add_parser("gelu", help="optimize() now against optimize() before item 37 (GELU), in turns")
    gelu.add_argument("--models", nargs="+", default=["vit_tiny_16", "vit_small_16", "coatnet_0"])
    gelu.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    bound = sub.add_parser("int8bound", help="B0 int8_dynamic's time split: depthwise taps, SiLUs, Python per forward")
    bound.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    bound.add_argument("--rounds", type=int, default=5)
    ws = sub.add_parser("wstream", help="the fused Winograd kernel's streaming stores on and off, paired forwards")
    ws.add_argument("--models", nargs="+", default=["efficientnetv2_s", "resnet_rs_50"])
    ws.add_argument("--batches", nargs="+", type=int, default=[8, 1])
    ws.add_argument("--pairs", type=int, default=30)
    pj = sub.add_parser("project", help="Fused-MBConv's Winograd expand + project convs as one pass, or apart")
    pj.add_argument("--models", nargs="+", default=["efficientnetv2_s"])
    pj.add_argument("--batches", nargs="+", type=int, default=[8, 1])
    pj.add_argument("--pairs", type=int, default=30)
    lib = sub.add_parser("lib", help="this native build against another one")
    lib.add_argument("other", help="path of the other build's .so")
    lib.add_argument("--dtype", default=None, help="optimize dtype, e.g. int8_dynamic (default fp32)")
    lib.add_argument("--models", nargs="+", default=["efficientnet_b0"], help="model names (default efficientnet_b0)")
    args = ap.parse_args(argv)
    if K.library() is None:
        print(f"native kernels unavailable: {K.why_unavailable}")
        return 1
    torch.manual_seed(0)
    runs = {"linear": linear_ab, "bf16": bf16_ab,
            "dense": lambda: dense_ab(args.models, args.batches),
            "item33": lambda: item33_ab(args.models, args.batches),
            "residual": lambda: residual_ab(args.models, args.batches),
            "gelu": lambda: gelu_ab(args.models, args.batches),
            "int8bound": lambda: int8_bound(args.batches, args.rounds),
            "prefetch": lambda: prefetch_ab(args.models, args.rounds),
            "wstream": lambda: wstream_ab(args.models, args.batches, args.pairs),
            "project": lambda: project_ab(args.models, args.batches, args.pairs),
            "lib": lambda: lib_ab(args.other, args.dtype, args.models)}
    runs[args.what]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
