"""What channel surgery reports: MACs per layer, and the options it refuses."""

from __future__ import annotations

import channel_graphs as cg
import numpy as np
import pytest

from onnx_dns.channel_plans import plan_channels
from onnx_dns.channel_report import batch_shapes, model_macs
from onnx_dns.errors import OptionError
from onnx_dns.options import CompressOptions
from onnx_dns.prunable import find_layers


def test_macs_count_each_output_times_its_receptive_field():
    macs = model_macs(cg.flatten_gemm())
    # conv 3->6, 3x3, padded 8x8: 6*8*8 outputs of 27 products; Gemm 96->10; Gemm 10->3
    assert macs == {"conv1": 6 * 8 * 8 * 27, "gemm5": 96 * 10, "gemm7": 10 * 3}


def test_depthwise_macs_count_one_input_channel_per_output():
    macs = model_macs(cg.residual(0, width=8))
    depthwise = next(v for k, v in macs.items() if k == "conv11")
    assert depthwise == 8 * 8 * 8 * 9


def symbolic_image_size():
    """conv1 of the C2f graph on an input [N, 3, H, W] with H and W symbolic."""
    model = cg.c2f()
    for dim, name in zip(model.graph.input[0].type.tensor_type.shape.dim[2:], "HW"):
        dim.ClearField("dim_value")
        dim.dim_param = name
    return model


def test_symbolic_image_sizes_are_those_of_the_training_inputs():
    model, sample = symbolic_image_size(), {"x": np.zeros((1, 3, 10, 12), np.float32)}
    assert batch_shapes(model, 4, sample) == {"x": (4, 3, 10, 12)}
    assert batch_shapes(model, 4) == {"x": (4, 3, 1, 1)}
    assert model_macs(model, sample)["conv1"] == 8 * 10 * 12 * 27  # 8 filters of 3x3x3 on a 10x12 image


@pytest.mark.parametrize("given, message", [
    ({"structure": "filter"}, "choose one of weight, channel"),
    ({"structure": "channel", "format": "sparse"}, "drop --format sparse"),
    ({"structure": "channel", "bits": 4}, "--bits"),
])
def test_channel_structure_options_are_checked(given, message):
    with pytest.raises(OptionError, match=message):
        CompressOptions(**given)


def test_per_layer_sparsity_is_refused_with_channels():
    model = cg.flatten_gemm()
    options = CompressOptions(structure="channel", sparsity={"conv1": 0.5})
    with pytest.raises(OptionError, match="--sparsity"):
        plan_channels(model, find_layers(model), options, "m.onnx", set())


def test_a_model_without_a_safe_group_is_refused_naming_why():
    from onnx_dns.errors import ModelError

    model = cg.refused("sigmoid")
    layers = [layer for layer in find_layers(model) if layer.name == "conv1"]  # conv3 is not planned
    with pytest.raises(ModelError, match="no channel group can be removed safely.*not zero where pruned"):
        plan_channels(model, layers, CompressOptions(structure="channel"), "m.onnx", set())
