"""onnx-dns: compress an ONNX model with Dynamic Network Surgery (Guo, Yao, Chen, NIPS 2016)."""

__version__ = "0.1.0"
