"""Make the gradient of a masked weight straight-through, as Dynamic Network Surgery requires.

Forward: W_masked = W * T. Autodiff gives dL/dW = dL/dW_masked * T, so a pruned entry (T = 0) never moves
and can never be spliced back. DNS updates W with dL/dW_masked for every entry. In the generated training
graph that product is one `Mul(W_masked_grad, T)` node per mask; this pass turns it into
`Identity(W_masked_grad)`. The forward pass still sees W * T.
"""

from __future__ import annotations

import onnx

from onnx_dns.passes import PassResult


def rewire_straight_through(training_model: onnx.ModelProto, masks: dict[str, str]) -> PassResult:
    """Rewire the gradient of each masked weight (`masks` maps weight -> mask) to bypass its mask.

    Raises ValueError naming the weight when its gradient product cannot be found exactly once.
    """
    out = onnx.ModelProto()
    out.CopyFrom(training_model)
    for weight, mask in masks.items():
        found = [
            n for n in out.graph.node
            if n.op_type == "Mul" and mask in n.input and weight not in n.input and len(n.input) == 2
        ]
        if len(found) != 1:
            raise ValueError(
                f"straight-through: expected one gradient Mul reading mask {mask!r} of {weight!r}, "
                f"found {len(found)}"
            )
        node = found[0]
        upstream = node.input[1] if node.input[0] == mask else node.input[0]
        node.op_type = "Identity"
        del node.input[:]
        node.input.append(upstream)
        node.name = node.name or f"{weight}_straight_through"
    return PassResult(out, bool(masks))
