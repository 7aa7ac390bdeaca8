"""GTrXL's GRU gate (attn/models/cores/gtrxl.py) against its equations, worked by hand in float64:

    r = sigmoid(W_r y + U_r x);  z = sigmoid(W_z y + U_z x - b_g)
    h_hat = tanh(W_g y + U_g (r * x));  out = (1 - z) * x + z * h_hat
"""

from __future__ import annotations

import math

import pytest
import torch

from attn.models.cores.gtrxl import GRUGate, GTrXLLayer

F64 = torch.float64


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _zeroed(gate: GRUGate) -> GRUGate:
    with torch.no_grad():
        for lin in (gate.w, gate.u_rz, gate.u_g):
            lin.weight.zero_()
    return gate


@pytest.mark.parametrize("b_g", [2.0, 0.0, -1.5, 5.0])
def test_zeroed_weights_scale_the_stream_by_one_minus_sigmoid_of_minus_b_g(b_g):
    # W = U = 0: r = 1/2, z = sigmoid(-b_g), h_hat = tanh(0) = 0, so out = (1 - sigmoid(-b_g)) * x, whatever y is.
    gate = _zeroed(GRUGate(4, gate_bias=b_g).to(F64))
    x = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.0, 7.0, -0.25, 1e-3]], dtype=F64)
    y = torch.tensor([[9.0, -9.0, 4.0, 2.0], [1.0, 1.0, 1.0, 1.0]], dtype=F64)
    keep = 1.0 - sigmoid(-b_g)
    want = torch.tensor([[keep * v for v in row] for row in x.tolist()], dtype=F64)
    torch.testing.assert_close(gate(x, y), want, rtol=1e-15, atol=1e-300)
    if b_g == 2.0:  # the documented start: z = sigmoid(-2) ~ 0.12, 88 % of the stream passes
        assert sigmoid(-b_g) == pytest.approx(0.1192, abs=1e-4)


def test_the_gate_bias_is_per_unit():
    gate = _zeroed(GRUGate(3).to(F64))
    with torch.no_grad():
        gate.b_g.copy_(torch.tensor([2.0, 0.0, -3.0], dtype=F64))
    x = torch.tensor([[2.0, 2.0, 2.0]], dtype=F64)
    want = [[2.0 * (1.0 - sigmoid(-b)) for b in (2.0, 0.0, -3.0)]]
    torch.testing.assert_close(gate(x, torch.zeros_like(x)), torch.tensor(want, dtype=F64), rtol=1e-15, atol=0.0)


def test_nonzero_weights_match_the_equations_computed_by_hand():
    # d = 2, every weight distinct, so a swapped W_r / W_z / W_g, a transposed matrix or U_g applied
    # to x instead of r * x gives other numbers.
    d = 2
    W_r, W_z, W_g = [[0.5, -1.0], [0.25, 2.0]], [[-0.75, 0.1], [1.5, -0.5]], [[1.2, 0.3], [-0.4, 0.9]]
    U_r, U_z, U_g = [[0.2, 0.7], [-1.1, 0.05]], [[0.6, -0.3], [0.45, 1.3]], [[-0.8, 0.35], [0.15, -1.25]]
    b_g = [2.0, 0.5]
    x, y = [0.9, -1.7], [-0.3, 1.1]

    def matvec(m, v):
        return [sum(m[i][j] * v[j] for j in range(d)) for i in range(d)]

    r = [sigmoid(a + b) for a, b in zip(matvec(W_r, y), matvec(U_r, x))]
    z = [sigmoid(a + b - c) for a, b, c in zip(matvec(W_z, y), matvec(U_z, x), b_g)]
    h_hat = [math.tanh(a + b) for a, b in zip(matvec(W_g, y), matvec(U_g, [ri * xi for ri, xi in zip(r, x)]))]
    want = [(1 - zi) * xi + zi * hi for zi, xi, hi in zip(z, x, h_hat)]

    gate = GRUGate(d).to(F64)
    with torch.no_grad():
        gate.w.weight.copy_(torch.tensor(W_r + W_z + W_g, dtype=F64))  # (3d, d): rows W_r, W_z, W_g
        gate.u_rz.weight.copy_(torch.tensor(U_r + U_z, dtype=F64))
        gate.u_g.weight.copy_(torch.tensor(U_g, dtype=F64))
        gate.b_g.copy_(torch.tensor(b_g, dtype=F64))
    got = gate(torch.tensor([x], dtype=F64), torch.tensor([y], dtype=F64))
    torch.testing.assert_close(got, torch.tensor([want], dtype=F64), rtol=1e-13, atol=1e-15)
    # the numbers themselves (unit 0 by hand: r = sigmoid(-1.25 - 1.01) = 0.0945, z = sigmoid(0.335 + 1.05 - 2) = 0.3509)
    assert want == pytest.approx([0.4114939, -1.6047402], abs=1e-6)


def test_a_layer_with_zeroed_gates_scales_the_stream_by_the_square_of_one_minus_z():
    # Both gates ignore what attention and the FFN produce: out = (1 - sigmoid(-b_g))^2 * x exactly.
    torch.manual_seed(0)
    layer = GTrXLLayer(8, 2, 4, 16, gate_bias=2.0).to(F64)
    _zeroed(layer.gate1)
    _zeroed(layer.gate2)
    x = torch.randn(2, 5, 8, dtype=F64, generator=torch.Generator().manual_seed(1))
    keep = 1.0 - sigmoid(-2.0)
    torch.testing.assert_close(layer.forward_sequence(x, None), x * keep * keep, rtol=1e-14, atol=1e-300)
