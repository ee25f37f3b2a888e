"""Pruning criteria: how a layer's prune and splice thresholds are chosen (`base.Criterion`).

`paper.Paper` is the rule of the paper's released code, `target.Target` reaches a compression target; which one a
run uses, and with what settings, is decided in `onnx_dns.plans`.
"""
