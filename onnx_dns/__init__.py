"""onnx-dns: compress ONNX models with Dynamic Network Surgery (prune and splice while fine-tuning).

    import onnx_dns
    result = onnx_dns.compress("model.onnx", {"input": x, "labels": y}, target="4x")
    result.save("model.dns.onnx")
"""

__version__ = "0.1.0"

from onnx_dns.api import compress, convert, evaluate, inspect, sensitivity, sweep  # noqa: E402
from onnx_dns.errors import (  # noqa: E402
    AccuracyBoundError, DataError, DnsError, Interrupted, ModelError, OptionError, OutputError, TrainingError,
)
from onnx_dns.result import CompressResult  # noqa: E402

__all__ = ["compress", "convert", "inspect", "evaluate", "sweep", "sensitivity", "CompressResult", "DnsError",
           "ModelError", "DataError", "OptionError", "OutputError", "TrainingError", "AccuracyBoundError",
           "Interrupted", "__version__"]
