"""The `onnx-dns` command line: parse options, call the library, print results."""
