"""ONNX graphs run as TensorFlow: each ONNX node becomes the TensorFlow ops with the same semantics.

Published anime taggers (WD v3, Camie v2, PixAI, DeepDanbooru exports) come as ONNX only, and TF-Serving runs
TensorFlow SavedModels only. `OnnxGraph` (graph.py) loads a model with the `onnx` package, folds the nodes
that depend on weights alone (position tables, relative-position biases) into constants, keeps large
tensors as variables (so they are saved in `variables/`, not in `saved_model.pb`) and, when called inside a
`tf.function`, builds the graph node by node with the handlers of ops.py. Nothing of ONNX or onnxruntime is
needed at serving time. Imports `onnx` only when a model is loaded; no TensorFlow-independent state.
"""

from acg2vec_models.onnx_tf.graph import OnnxGraph, UnsupportedOnnx

__all__ = ["OnnxGraph", "UnsupportedOnnx"]
