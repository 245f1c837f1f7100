"""Static int8 layers: int8 weights (per output channel) and int8 activations with a scale FIXED at
registration, so that a row's result depends on that row alone.

Each matrix product is fbgemm's ``quantized::linear_with_input_q_dq_qweight_dq_output_fp32``: the float input
is quantized with the recorded scale and zero point (an element-wise rule), multiplied in int8 with int32 sums
(exact, in any order), and the sums are scaled back to float32 with the bias. Dynamic int8 (what scoring used
before) takes the activations' range from each batch tensor, so a score moved with its batch neighbours.

:class:`Int8GRU` / :class:`Int8LSTM` replace a one-layer, one-direction, batch-first ``nn.GRU`` / ``nn.LSTM``
(how :mod:`pipeline.model.network` builds them): the input projection of every step in one product, then a
time loop of one product with the hidden state and the gate arithmetic. Gate non-linearities run on views that
keep each row's elements apart from the next row's (a row stride wider than the row), so every row takes the
same vector/scalar split, and the rest is single-rounding ``+ - *``: nothing in a step mixes rows.

Activations use 7 of the 8 bits (``[0, 127]``), as fbgemm recommends on x86 (its u8 x s8 pair sums stay in
int16); values beyond the recorded range clamp.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

_QMAX = 127


def activation_qparams(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero point) of uint8 activations in ``[0, 127]`` covering ``[lo, hi]`` (widened to hold 0)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo <= 0.0:
        return 1.0, 0
    scale = (hi - lo) / _QMAX
    return scale, int(min(max(round(-lo / scale), 0), _QMAX))


def _packed(weight: torch.Tensor, bias: torch.Tensor | None):
    """fbgemm's packed int8 weight: symmetric per output channel (scale = the row's max |w| / 127)."""
    w = weight.detach().float().cpu()
    scales = (w.abs().amax(1) / _QMAX).clamp(min=1e-12).double()
    with warnings.catch_warnings():      # torch 2.13 marks quantized tensors deprecated (torchao successor)
        warnings.simplefilter("ignore")
        q = torch.quantize_per_channel(w, scales, torch.zeros(w.size(0), dtype=torch.long), 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(q, None if bias is None else bias.detach().float().cpu())


class _Product:
    """``x @ W.T + b`` with ``x`` quantized at a fixed (scale, zero point)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, qparams: tuple[float, int]):
        self.packed = _packed(weight, bias)
        self.scale, self.zero_point = qparams

    def __call__(self, x: torch.Tensor, check: bool = False) -> torch.Tensor:
        """``check``: refuse non-finite input (quantizing NaN gives a finite number, which would hide damaged
        weights); once per layer, not per time step, by its sum (NaN and inf carry into it; one cheap pass)."""
        if check and not math.isfinite(float(x.sum())):
            raise FloatingPointError("non-finite activations reached an int8 layer")
        op = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32
        return op(x.contiguous(), self.scale, self.zero_point, self.packed)


class Int8Linear(nn.Module):
    """``nn.Linear`` in static int8; the input's range is recorded (``x``)."""

    def __init__(self, linear: nn.Linear, x_range: tuple[float, float]):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.product = _Product(linear.weight, linear.bias, activation_qparams(*x_range))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        return self.product(x.reshape(-1, self.in_features), check=True).view(*lead, self.out_features)


class _Int8Recurrent(nn.Module):
    """What the GRU and LSTM share: the input projection over all steps, and the hidden-state product."""

    gates = 0

    def __init__(self, rnn: nn.RNNBase, x_range: tuple[float, float], h_range: tuple[float, float]):
        super().__init__()
        if rnn.num_layers != 1 or rnn.bidirectional or not rnn.batch_first or getattr(rnn, "proj_size", 0):
            raise ValueError("static int8 takes one-layer, one-direction, batch-first recurrent layers")
        self.hidden_size = rnn.hidden_size
        self.ih = _Product(rnn.weight_ih_l0, rnn.bias_ih_l0, activation_qparams(*x_range))
        self.hh = _Product(rnn.weight_hh_l0, rnn.bias_hh_l0, activation_qparams(*h_range))

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        B, T, E = x.shape
        return self.ih(x.reshape(B * T, E), check=True).view(B, T, self.gates * self.hidden_size)


class Int8GRU(_Int8Recurrent):
    """``nn.GRU`` (r, z, n gates) in static int8: ``h' = n + z * (h - n)``; returns (outputs, last h).

    Buffers are made once per call: the gates ``s`` [B, 3H] (r and z as one view, n another, each row's values
    apart from the next row's) and the outputs time-major, so a step's new ``h`` is written in place."""

    gates = 3

    def forward(self, x: torch.Tensor, hx=None) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, _ = x.shape
        H = self.hidden_size
        gi = self.inputs(x)
        gi_rz, gi_n = gi[:, :, :2 * H].unbind(1), gi[:, :, 2 * H:].unbind(1)
        s = x.new_empty(B, 3 * H)
        s_rz, s_r, s_z, s_n = s[:, :2 * H], s[:, :H], s[:, H:2 * H], s[:, 2 * H:]
        out = x.new_empty(T, B, H)
        h = x.new_zeros(B, H)
        for t, h_t in enumerate(out.unbind(0)):
            gh = self.hh(h)
            torch.add(gi_rz[t], gh[:, :2 * H], out=s_rz).sigmoid_()
            torch.mul(s_r, gh[:, 2 * H:], out=s_n).add_(gi_n[t]).tanh_()
            torch.sub(h, s_n, out=h_t).mul_(s_z).add_(s_n)
            h = h_t
        return out.transpose(0, 1), h.unsqueeze(0)


class Int8LSTM(_Int8Recurrent):
    """``nn.LSTM`` (i, f, g, o gates) in static int8: ``c' = f c + i g``, ``h' = o tanh(c')``; returns
    (outputs, (last h, last c)). Buffers as :class:`Int8GRU`'s; ``cell`` [B, 2H] holds c and tanh(c) side by
    side, so that tanh reads each row on its own."""

    gates = 4

    def forward(self, x: torch.Tensor, hx=None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        B, T, _ = x.shape
        H = self.hidden_size
        gi = self.inputs(x).unbind(1)
        s = x.new_empty(B, 4 * H)
        s_if, s_i, s_f, s_g, s_o = s[:, :2 * H], s[:, :H], s[:, H:2 * H], s[:, 2 * H:3 * H], s[:, 3 * H:]
        cell = x.new_zeros(B, 2 * H)
        c, tanh_c = cell[:, :H], cell[:, H:]
        ig = x.new_empty(B, H)
        out = x.new_empty(T, B, H)
        h = x.new_zeros(B, H)
        for t, h_t in enumerate(out.unbind(0)):
            torch.add(gi[t], self.hh(h), out=s)
            s_if.sigmoid_()
            s_g.tanh_()
            s_o.sigmoid_()
            c.mul_(s_f).add_(torch.mul(s_i, s_g, out=ig))
            torch.tanh(c, out=tanh_c)
            h = torch.mul(s_o, tanh_c, out=h_t)
        return out.transpose(0, 1), (h.unsqueeze(0), c.unsqueeze(0))
