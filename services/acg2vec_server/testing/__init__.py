"""Test doubles the command line can start: the TF-Serving emulator (`acg2vec tfserving-emulator`), used by the
tests, the fault rig and the benchmarks in place of tensorflow_model_server. Never used by the serving path.

May import the backends (it serves the repository with the in-process backend) and tensorflow-serving-api.
"""
