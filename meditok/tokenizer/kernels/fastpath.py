"""Inference speed modes of a :class:`~meditok.tokenizer.model.MedITok` model.

``exact`` (the default, nothing to do): every token and every reconstruction value bit for
bit as the plain eager model; the fused nearest-code search and the heap setting of
:func:`meditok.tokenizer.kernels.cpu.tune_allocator` are exact by construction.

``fast`` (:func:`enable_fast_decoder`): the decoder's ``nearest ×2 → conv3x3`` pairs
(``Upsample2d``) become one sub-pixel 2x2 convolution on the low-resolution input. The
encoder is untouched, so **tokens are identical**; the reconstruction is the same function
with a different rounding (fp32, measured max |Δ| ~1e-5 on [-1, 1] images), at 2.25x fewer
multiply-adds in those convolutions — the 3x3 convs on the expanded width after upsampling
are most of the decoder's FLOPs (e.g. 2 x 121 of ~690 GFLOP per 256² image for ``large``).

Why it is exact in exact arithmetic: after nearest upsampling, output pixel ``(2i+p, 2j+q)``
sees input rows ``{i-1, i, i}`` (p = 0) or ``{i, i, i+1}`` (p = 1) through kernel rows
``(0, 1, 2)``, so row taps that hit the same input row can be summed beforehand: phase 0 uses
``(W0, W1+W2)`` on rows ``(i-1, i)``, phase 1 ``(W0+W1, W2)`` on rows ``(i, i+1)`` (same for
columns). All four phases are one 2x2 convolution over the zero-padded input with
``4 x C_out`` output channels; phase (p, q) is the window ``[p:p+H, q:q+W]`` of its group.

``onednn`` (:func:`enable_onednn_linear`, opt-in): every ``nn.Linear`` through oneDNN's fp32
inner product with a prepacked weight instead of MKL's sgemm (torch's default for fp32
``F.linear`` on x86). Which library is faster depends on the CPU: MKL takes a slower AVX2 path
on AMD CPUs, where oneDNN measured 1.7x on ``large``'s GEMMs; on the Intel Xeon this was
developed on, MKL is as fast (benchmarks/results/throughput_modes_*). Results differ from
MKL's in the last bits for long reductions, so tokens can change: measured, not assumed.

bf16 (``precision="bf16"`` on the model methods) is separate: it changes tokens and is
reported with its agreement.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """3x3 kernel ``[O, I, 3, 3]`` → the four 2x2 phase kernels stacked ``[4·O, I, 2, 2]``,
    order (p, q) = (0,0), (0,1), (1,0), (1,1). Summed in fp64 so that each folded tap is the
    correctly rounded sum."""
    w = weight.double()
    rows = (torch.stack([w[:, :, 0], w[:, :, 1] + w[:, :, 2]], 2),   # p = 0: rows (i-1, i)
            torch.stack([w[:, :, 0] + w[:, :, 1], w[:, :, 2]], 2))   # p = 1: rows (i, i+1)
    out = []
    for r in rows:  # [O, I, 2, 3]
        for q in range(2):
            if q == 0:
                k = torch.stack([r[..., 0], r[..., 1] + r[..., 2]], -1)
            else:
                k = torch.stack([r[..., 0] + r[..., 1], r[..., 2]], -1)
            out.append(k)
    return torch.cat(out, 0).to(weight.dtype)


class SubpixelUpsampleConv(nn.Module):
    """Drop-in for ``Upsample2d`` (nearest ×2 then ``conv``, 3x3, padding 1): the same
    ``conv`` parameters (state-dict keys unchanged), computed as one 2x2 sub-pixel conv.
    The folded kernel is cached and rebuilt whenever the conv's weight changes."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.stride != (1, 1) \
                or conv.groups != 1 or conv.dilation != (1, 1):
            raise ValueError("sub-pixel form needs a 3x3, stride 1, padding 1, ungrouped conv")
        self.conv = conv
        self._key: tuple | None = None
        self._kernel: torch.Tensor | None = None

    def kernel(self) -> torch.Tensor:
        w = self.conv.weight
        key = (w.data_ptr(), w._version, w.dtype, w.device)
        if self._key != key:
            with torch.no_grad():
                self._kernel = _phase_kernels(w.detach())
            self._key = key
        return self._kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        o = self.conv.out_channels
        k = self.kernel()
        bias = self.conv.bias
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        if bias is not None:
            bias = bias.detach().repeat(4).to(dtype)
        y = F.conv2d(F.pad(x, (1, 1, 1, 1)).to(dtype), k.to(dtype), bias)  # [B, 4·O, H+1, W+1]
        y = y.view(b, 2, 2, o, h + 1, w + 1)
        out = y.new_empty(b, o, h, 2, w, 2)
        for p in range(2):
            for q in range(2):
                out[:, :, :, p, :, q] = y[:, p, q, :, p:p + h, q:q + w]
        return out.view(b, o, 2 * h, 2 * w)


class OneDNNLinear(nn.Module):
    """Drop-in for ``nn.Linear`` computed by oneDNN (fp32, weight prepacked and cached; the
    same ``weight`` / ``bias`` parameters, so state-dict keys are unchanged)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._key: tuple | None = None
        self._packed: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_grad_enabled()
                or torch.is_autocast_enabled("cpu")):
            return F.linear(x, self.weight, self.bias)
        w = self.weight
        key = (w.data_ptr(), w._version)
        if self._key != key:
            self._packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), None)
            self._key = key
        bias = self.bias.detach() if self.bias is not None else None
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, bias, "none", [], "")


def enable_onednn_linear(model: nn.Module) -> int:
    """Route ``model``'s ``nn.Linear`` layers through oneDNN (CPU fp32 inference only; other
    devices, autocast and training keep ``F.linear``). Returns how many were switched."""
    if not torch.backends.mkldnn.is_available():
        return 0
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, OneDNNLinear(child))
                n += 1
    return n


def enable_fast_decoder(model: nn.Module) -> int:
    """Switch every nearest-upsample + 3x3 conv of ``model``'s decoder to the sub-pixel form
    (in place; parameters and state-dict keys unchanged). Returns how many were switched.
    Tokens are unaffected (the encoder is untouched)."""
    from meditok.tokenizer.decoder import Upsample2d

    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Upsample2d):
                setattr(parent, name, SubpixelUpsampleConv(child.conv))
                n += 1
    return n


def disable_fast_decoder(model: nn.Module) -> int:
    """Undo :func:`enable_fast_decoder` (back to the exact eager decoder)."""
    from meditok.tokenizer.decoder import Upsample2d

    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SubpixelUpsampleConv):
                up = Upsample2d(child.conv.in_channels, child.conv.out_channels)
                up.conv = child.conv
                setattr(parent, name, up)
                n += 1
    return n


def compile_model(model: nn.Module, **options) -> nn.Module:
    """``torch.compile`` the encoder and the decoder of ``model`` in place (``options`` go to
    ``torch.compile``); the nearest-code search stays eager between them (it is excluded from
    compilation), so the fused kernel is still used.

    Where it wins: measured x1.05 over the exact eager path on ``small`` tokenize at 128²
    (2 CPU threads, tokens identical on 64 real images), after a ~40 s first call; on GPUs see
    ``benchmarks/gpu_benchmark.py``. Inductor generates its own kernels, so bit-identity with
    eager is not guaranteed in general: check tokens on your data.
    """
    model.encoder = torch.compile(model.encoder, **options)
    model.decoder = torch.compile(model.decoder, **options)
    return model
