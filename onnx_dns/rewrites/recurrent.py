"""Train ONNX LSTM, GRU and RNN nodes on CPU by unrolling each one over its time steps.

Measured in onnxruntime-training 1.19.2: RNN has no gradient builder. The LSTM and GRU builders (the node becomes
com.microsoft LSTMTraining/GRUTraining with an LSTMGrad/GRUGrad) miswire the gradient node ("Type 'tensor(float)'
of input parameter (y) of operator (LSTMGrad) ... is invalid") unless the node lists every input slot up to
initial_c (LSTM: 7) or initial_h (GRU: 6); so padded, the kernels give right gradients for the forward direction,
layout 0 and default activations only, a wrong one with peepholes, and refuse reverse and bidirectional nodes.
The unrolled form has none of these limits and trains about as fast (47 against 49 ms a step, T=32, N=16, I=H=128);
it needs a static sequence length (shape inference once compress has pinned the input sizes to the data's).

Notation (ONNX spec): X is (T, N, I) (layout 1: (N, T, I)); for direction d, W[d] is (G*H, I) and R[d] is
(G*H, H), stacked by gate; B[d] = [Wb, Rb], each (G*H,); P[d] = [Pi, Po, Pf]; f, g, h are the direction's
activations; x_t = X[t] W[d]^T + Wb + Rb, its gate k the columns [k*H, (k+1)*H). A forward direction runs
t = 0 .. T-1, a reverse one t = T-1 .. 0, from H = initial_h[d] and C = initial_c[d] (zeros when absent).

    LSTM (gates i, o, f, c):  i = f(x_i + H Ri^T + Pi*C)     f_ = f(x_f + H Rf^T + Pf*C)
                              c~ = g(x_c + H Rc^T)           C' = f_*C + i*c~
                              o = f(x_o + H Ro^T + Po*C')    H' = o * h(C')
    GRU (gates z, r, h):      z = f(x_z + H Rz^T)            r = f(x_r + H Rr^T)
        linear_before_reset 0: h~ = g(x_h + (r*H) Rh^T)       (Rbh is inside x_h)
        linear_before_reset 1: h~ = g(x_h + r*(H Rh^T + Rbh)) (Rbh is taken out of x_h)
                              H' = (1 - z)*h~ + z*H
    RNN:                      H' = f(x_i + H Ri^T)

Y[t, d] is H after step t of direction d; Y_h[d] and Y_c[d] are H and C after the direction's last step (for a
reverse direction, the step at t = 0). Layout 1 reads X and the initial states batch-first and writes Y as
(N, T, D, H) and Y_h, Y_c as (N, D, H).

Written with Split and Squeeze (directions, gates, time steps), Transpose, MatMul, Add, Mul, Sub, Sigmoid, Tanh,
Relu, Unsqueeze, Concat and Shape/ConstantOfShape (zero states), which all have CPU gradients. W, R and B (their
masked versions in a masked model) are read directly by Split or Squeeze, so they train under their own names and the
straight-through rewiring still finds `Mul(W_masked_grad, mask)`. Refused (the node is left as it is and
reported): sequence_lens, clip, input_forget, activations other than Sigmoid, Tanh and Relu, and an unknown
sequence length or input type.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx.numpy_helper

from onnx_dns.graph import attribute, axes_are_input
from onnx_dns.rewrites.emitter import Emitter, Skip

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}
_ACTIVATIONS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu"}
_X, _W, _R, _B, _SEQUENCE_LENS, _INITIAL_H, _INITIAL_C, _P = range(8)
_PER_DIRECTION = {_W: "w", _R: "r", _B: "b", _INITIAL_H: "h0", _INITIAL_C: "c0", _P: "p"}  # stacked on directions
_STATES = (_INITIAL_H, _INITIAL_C)  # batch-first (N, D, H) with layout 1


def unsupported(node: onnx.NodeProto) -> str | None:
    """Why the recurrent `node` cannot be unrolled, judged from its inputs and attributes, or None."""
    if _given(node, _SEQUENCE_LENS):
        return ("its sequence_lens input (variable sequence lengths) is not supported; pad the sequences to one "
                "length and export without sequence_lens")
    if attribute(node, "clip", None) is not None:
        return "its clip attribute is not supported"
    if attribute(node, "input_forget", 0):
        return "input_forget=1 is not supported"
    unknown = [a for a in _activation_names(node) if a.lower() not in _ACTIVATIONS]
    if unknown:
        return f"activation {unknown[0]} is not supported (only Sigmoid, Tanh and Relu)"
    return None


def gradient_problem(node: onnx.NodeProto) -> str:
    """Why a recurrent node is still in the training model after rewrite_for_training (which unrolls the rest)."""
    return unsupported(node) or ("it could not be unrolled: its sequence length or input type is unknown to shape "
                                 "inference (give the model's inputs fixed sizes)")


def lstm(e: Emitter, node: onnx.NodeProto) -> None:
    _unroll(e, node, _lstm_step)


def gru(e: Emitter, node: onnx.NodeProto) -> None:
    _unroll(e, node, _gru_step)


def rnn(e: Emitter, node: onnx.NodeProto) -> None:
    _unroll(e, node, _rnn_step)


@dataclass
class _Direction:
    """What the steps of one direction read: per-gate input terms (T, N, H) and recurrence weights (H, H)."""

    e: Emitter
    prefix: str
    dtype: np.dtype
    activations: tuple[str, ...]
    x: list[str]
    r: list[str]
    recurrent_h_bias: str | None = None
    peepholes: list[str] | None = None
    linear_before_reset: bool = False
    one: str | None = None
    hs: dict[int, str] = field(default_factory=dict)

    def op(self, op_type: str, inputs: list[str], what: str, **attrs) -> str:
        return self.e.op(op_type, inputs, f"{self.prefix}_{what}", **attrs)

    def act(self, which: int, x: str, what: str) -> str:
        return self.op(self.activations[which], [x], what)

    def pre(self, gate: int, x_t: list[str], h: str, what: str) -> str:
        """x_t of the gate plus H R_gate^T."""
        return self.op("Add", [x_t[gate], self.op("MatMul", [h, self.r[gate]], what + "_rec")], what + "_pre")


def _unroll(e: Emitter, node: onnx.NodeProto, step) -> None:
    problem = unsupported(node)
    if problem is not None:
        raise Skip(problem)
    x = node.input[_X]
    dtype = e.float_dtype(x)
    layout = int(attribute(node, "layout", 0))
    steps = _dim(e, x, 1 if layout else 0)
    hidden = int(attribute(node, "hidden_size", 0)) or _dim(e, node.input[_R], 2)
    sequence = e.op("Transpose", [x], "x_time_major", perm=[1, 0, 2]) if layout else x
    reverse_flags = _reverse_flags(node)
    per_direction = {i: _per_direction(e, node.input[i], len(reverse_flags), layout if i in _STATES else 0, what)
                     for i, what in _PER_DIRECTION.items() if _given(node, i)}
    results = []
    for d, reverse in enumerate(reverse_flags):
        tensors = {i: parts[d] for i, parts in per_direction.items()}
        direction = _prepare_direction(e, node, sequence, tensors, d, hidden, dtype)
        x = [_time_steps(e, gate, steps, f"d{d}_x{k}") for k, gate in enumerate(direction.x)]
        h = tensors.get(_INITIAL_H) or _zeros_like(e, x[0][0], dtype, f"d{d}_h0")
        c = tensors.get(_INITIAL_C) or (_zeros_like(e, x[0][0], dtype, f"d{d}_c0") if node.op_type == "LSTM" else None)
        for t in (reversed(range(steps)) if reverse else range(steps)):
            h, c = step(direction, [gate[t] for gate in x], h, c, f"t{t}")
            direction.hs[t] = h
        results.append((direction.hs, h, c))
    _write_outputs(e, node, results, steps, layout)


def _prepare_direction(e: Emitter, node, sequence: str, tensors: dict[int, str], d: int, hidden: int,
                       dtype: np.dtype) -> _Direction:
    """Direction d's gate inputs X W_k^T + Wb_k + Rb_k over all steps, and its recurrence blocks R_k^T."""
    gates = GATES[node.op_type]
    w = e.op("Transpose", [tensors[_W]], f"d{d}_w_t", perm=[1, 0])
    x = _split(e, e.op("MatMul", [sequence, w], f"d{d}_xw"), [hidden] * gates, 2, f"d{d}_xw")
    linear_before_reset = node.op_type == "GRU" and bool(attribute(node, "linear_before_reset", 0))
    recurrent_h_bias = None
    if _B in tensors:
        biases = _split(e, tensors[_B], [hidden] * (2 * gates), 0, f"d{d}_b")  # Wb by gate, then Rb by gate
        for k in range(gates):
            if linear_before_reset and k == 2:  # Rbh is added inside r * (H Rh^T + Rbh)
                recurrent_h_bias, bias = biases[gates + k], biases[k]
            else:
                bias = e.op("Add", [biases[k], biases[gates + k]], f"d{d}_bias{k}")
            x[k] = e.op("Add", [x[k], bias], f"d{d}_x{k}")
    names = _activation_names(node)
    count = len(_DEFAULT_ACTIVATIONS[node.op_type])
    return _Direction(
        e=e, prefix=f"d{d}", dtype=dtype, linear_before_reset=linear_before_reset, x=x,
        activations=tuple(_ACTIVATIONS[a.lower()] for a in names[d * count:(d + 1) * count]),
        r=[e.op("Transpose", [block], f"d{d}_r{k}_t", perm=[1, 0])
           for k, block in enumerate(_split(e, tensors[_R], [hidden] * gates, 0, f"d{d}_r"))],
        recurrent_h_bias=recurrent_h_bias,
        peepholes=_split(e, tensors[_P], [hidden] * 3, 0, f"d{d}_p") if _P in tensors else None,
    )


def _lstm_step(s: _Direction, x_t: list[str], h: str, c: str, t: str) -> tuple[str, str]:
    i_pre, o_pre, f_pre = (s.pre(k, x_t, h, f"{t}_{g}") for k, g in enumerate("iof"))
    if s.peepholes:
        i_pre = s.op("Add", [i_pre, s.op("Mul", [s.peepholes[0], c], f"{t}_pi_c")], f"{t}_i_peep")
        f_pre = s.op("Add", [f_pre, s.op("Mul", [s.peepholes[2], c], f"{t}_pf_c")], f"{t}_f_peep")
    i, f = s.act(0, i_pre, f"{t}_i"), s.act(0, f_pre, f"{t}_f")
    candidate = s.act(1, s.pre(3, x_t, h, f"{t}_c"), f"{t}_cand")
    new_c = s.op("Add", [s.op("Mul", [f, c], f"{t}_fc"), s.op("Mul", [i, candidate], f"{t}_ic")], f"{t}_cell")
    if s.peepholes:
        o_pre = s.op("Add", [o_pre, s.op("Mul", [s.peepholes[1], new_c], f"{t}_po_c")], f"{t}_o_peep")
    o = s.act(0, o_pre, f"{t}_o")
    return s.op("Mul", [o, s.act(2, new_c, f"{t}_hc")], f"{t}_h"), new_c


def _gru_step(s: _Direction, x_t: list[str], h: str, c: None, t: str) -> tuple[str, None]:
    z = s.act(0, s.pre(0, x_t, h, f"{t}_z"), f"{t}_z")
    r = s.act(0, s.pre(1, x_t, h, f"{t}_r"), f"{t}_r")
    if s.linear_before_reset:
        linear = s.op("MatMul", [h, s.r[2]], f"{t}_hr")
        if s.recurrent_h_bias is not None:
            linear = s.op("Add", [linear, s.recurrent_h_bias], f"{t}_hr_b")
        recurrent = s.op("Mul", [r, linear], f"{t}_r_hr")
    else:
        recurrent = s.op("MatMul", [s.op("Mul", [r, h], f"{t}_rh"), s.r[2]], f"{t}_rh_r")
    candidate = s.act(1, s.op("Add", [x_t[2], recurrent], f"{t}_hpre"), f"{t}_cand")
    s.one = s.one or s.e.const(np.array(1, s.dtype), f"{s.prefix}_one")
    keep = s.op("Mul", [s.op("Sub", [s.one, z], f"{t}_1mz"), candidate], f"{t}_new")
    return s.op("Add", [keep, s.op("Mul", [z, h], f"{t}_zh")], f"{t}_h"), None


def _rnn_step(s: _Direction, x_t: list[str], h: str, c: None, t: str) -> tuple[str, None]:
    return s.act(0, s.pre(0, x_t, h, f"{t}_i"), f"{t}_h"), None


def _write_outputs(e: Emitter, node: onnx.NodeProto, results, steps: int, layout: int) -> None:
    """Y (T, D, N, H), Y_h and Y_c (D, N, H) from each direction's states; batch-first when layout is 1."""
    outputs = list(node.output) + [""] * 3
    if outputs[0]:
        rows = [_concat(e, [_unsqueeze(e, hs[t], [0, 1], f"y_t{t}_d{d}") for d, (hs, _, _) in enumerate(results)],
                        1, f"y_t{t}") for t in range(steps)]
        y = _concat(e, rows, 0, "y", None if layout else outputs[0])
        if layout:
            e.op("Transpose", [y], "y_batch_major", output=outputs[0], perm=[2, 0, 1, 3])
    for index, output in ((1, outputs[1]), (2, outputs[2])):
        if not output:
            continue
        what = "y_h" if index == 1 else "y_c"
        parts = [_unsqueeze(e, state[index], [0], f"{what}_d{d}") for d, state in enumerate(results)]
        stacked = _concat(e, parts, 0, what, None if layout else output)
        if layout:
            e.op("Transpose", [stacked], what + "_batch_major", output=output, perm=[1, 0, 2])


def _given(node: onnx.NodeProto, index: int) -> bool:
    return len(node.input) > index and bool(node.input[index])


def _reverse_flags(node: onnx.NodeProto) -> tuple[bool, ...]:
    direction = attribute(node, "direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    return {"forward": (False,), "reverse": (True,), "bidirectional": (False, True)}[direction]


def _activation_names(node: onnx.NodeProto) -> list[str]:
    names = [a.decode() if isinstance(a, bytes) else a for a in attribute(node, "activations", [])]
    return names or list(_DEFAULT_ACTIVATIONS[node.op_type]) * len(_reverse_flags(node))


def _time_steps(e: Emitter, sequence: str, steps: int, what: str) -> list[str]:
    """The (N, H) steps of a (T, N, H) tensor."""
    return [_squeeze(e, part, 0, f"{what}_t{t}") for t, part in enumerate(_split(e, sequence, [1] * steps, 0, what))]


def _per_direction(e: Emitter, tensor: str, directions: int, axis: int, what: str) -> list[str]:
    """The parts of a tensor stacked by direction on `axis`, that axis removed."""
    return [_squeeze(e, part, axis, f"{what}_d{d}") for d, part in enumerate(_split(e, tensor, [1] * directions,
                                                                                   axis, what))]


def _zeros_like(e: Emitter, tensor: str, dtype: np.dtype, what: str) -> str:
    """An absent initial state: zeros, not left-out terms, since a step input without a gradient would break the
    gradient of the Split that made it (onnxruntime-training 1.19 concatenates only the gradients it has)."""
    zero = onnx.numpy_helper.from_array(np.zeros(1, dtype), "")
    return e.op("ConstantOfShape", [e.op("Shape", [tensor], what + "_shape")], what, value=zero)


def _split(e: Emitter, tensor: str, sizes: list[int], axis: int, what: str) -> list[str]:
    """Consecutive parts of `tensor` along `axis`. Always a Split, never several Gathers or Slices of one tensor:
    onnxruntime-training fuses those into a Split (GatherSliceToSplitFusion) whose gradient then fails shape
    inference ("Can't merge shape info", measured)."""
    if len(sizes) == 1:
        return [tensor]
    names = [e.name(f"{what}_part{i}") for i in range(len(sizes))]
    if axes_are_input("Split", e.opset):
        inputs, attrs = [tensor, e.const(np.array(sizes, np.int64), what + "_sizes")], {}
    else:
        inputs, attrs = [tensor], {"split": sizes}
    e.nodes.append(onnx.helper.make_node("Split", inputs, names, name=e.name(what + "_split"), axis=axis, **attrs))
    return names


def _squeeze(e: Emitter, tensor: str, axis: int, what: str) -> str:
    return e.over_axes("Squeeze", tensor, [axis], what)


def _unsqueeze(e: Emitter, tensor: str, axes: list[int], what: str) -> str:
    return e.over_axes("Unsqueeze", tensor, axes, what)


def _concat(e: Emitter, parts: list[str], axis: int, what: str, output: str | None = None) -> str:
    return e.op("Concat", parts, what, output=output, axis=axis)


def _dim(e: Emitter, tensor: str, axis: int) -> int:
    """A size of `tensor` that shape inference knows as a number (the unrolled length, the hidden size)."""
    return e.static_shape(tensor, [axis])[0]
