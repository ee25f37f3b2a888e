"""Einsum (no gradient builder in ORT 1.19) of one or two operands as ReduceSum, Transpose, Reshape and MatMul.

Letters of an operand that appear in no other operand nor the output are summed first (ReduceSum). Then, for
two operands A and B, each remaining letter is a batch letter (in A, B and the output), a contracted letter
(in A and B only), or a free letter of A or of B (in that operand and the output)::

    A -> Transpose [batch, free_A, contracted] -> Reshape (b, f_A, k)
    B -> Transpose [batch, contracted, free_B] -> Reshape (b, k, f_B)
    Y = Transpose(Reshape(MatMul(A', B'), [batch sizes, free_A sizes, free_B sizes]), to the output's order)

  where b, f_A, k, f_B are products of the letters' sizes; one letter may have a symbolic size (a batch), its
  groups are then -1 in the Reshapes. One operand: ReduceSum then Transpose. Equations with an ellipsis, a
  letter repeated in one operand (a diagonal), a letter that broadcasts (size 1 against n) or more than two
  operands are refused.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnx_dns.rewrites.emitter import Emitter, Skip, text_attribute


def _parse(equation: str, count: int) -> tuple[list[str], str]:
    equation = equation.replace(" ", "")
    if "." in equation:
        raise Skip(f"its equation {equation} has an ellipsis")
    left, arrow, output = equation.partition("->")
    terms = left.split(",")
    if not arrow:
        output = "".join(sorted(c for c in set(left) if c != "," and left.count(c) == 1))
    if len(terms) != count or count > 2 or any(len(set(t)) != len(t) for t in terms):
        raise Skip(f"its equation {equation} has a repeated letter in one operand or more than two operands")
    return terms, output


def _summed(e: Emitter, x: str, term: str, keep: set[str], what: str) -> tuple[str, str]:
    """x with the letters not in `keep` summed away, and its remaining letters."""
    axes = [i for i, c in enumerate(term) if c not in keep]
    if not axes:
        return x, term
    x = e.over_axes("ReduceSum", x, axes, what, keepdims=0)
    return x, "".join(c for c in term if c in keep)


def einsum(e: Emitter, node: onnx.NodeProto) -> None:
    equation = text_attribute(node, "equation", "")
    terms, output = _parse(equation, len(node.input))
    sizes: dict[str, int | None] = {}
    for name, term in zip(node.input, terms):
        e.float_dtype(name)
        if e.rank(name) != len(term):
            raise Skip(f"its equation {equation} does not fit the rank of {name}")
        for letter, size in zip(term, e.facts.shapes[name]):
            if None not in (size, sizes.get(letter)) and sizes[letter] != size:
                raise Skip(f"its letter {letter} has sizes {sizes[letter]} and {size} (broadcasting)")
            sizes[letter] = size if sizes.get(letter) is None else sizes[letter]
    if len(terms) == 1:
        x, term = _summed(e, node.input[0], terms[0], set(output), "sum")
        e.transpose(x, [term.index(c) for c in output], "transpose", output=node.output[0])
        return
    (a, ta), (b, tb) = [(_summed(e, name, term, set(output) | set(other), f"sum{i}"))
                        for i, (name, term, other) in enumerate(zip(node.input, terms, terms[::-1]))]
    batch = [c for c in ta if c in tb and c in output]
    contracted = [c for c in ta if c in tb and c not in output]
    free_a = [c for c in ta if c not in tb]
    free_b = [c for c in tb if c not in ta]

    if sum(1 for v in sizes.values() if v is None) > 1:
        raise Skip(f"more than one letter of {equation} has a symbolic size")

    def size(letters: list[str]) -> int:
        known = [sizes[c] for c in letters]
        return -1 if None in known else int(np.prod(known, dtype=np.int64))

    left = e.reshape(e.transpose(a, [ta.index(c) for c in batch + free_a + contracted], "a_moved"),
                     [size(batch), size(free_a), size(contracted)], "a_matrix")
    right = e.reshape(e.transpose(b, [tb.index(c) for c in batch + contracted + free_b], "b_moved"),
                      [size(batch), size(contracted), size(free_b)], "b_matrix")
    product = e.op("MatMul", [left, right], "matmul")
    letters = batch + free_a + free_b
    full = e.reshape(product, [-1 if sizes[c] is None else sizes[c] for c in letters], "unflatten")
    e.transpose(full, [letters.index(c) for c in output], "transpose", output=node.output[0])
