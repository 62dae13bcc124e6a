"""The `acg2vec` command line: main.py (the group) and one module per command or command group: serve, repair,
models (`acg2vec models ...`), train, text, auth, emulator (`tfserving-emulator`); options.py holds what they
share. `acg2vec index` is the Python client's bulk indexer (acg2vec.indexer.cli).

May import everything in acg2vec_server and acg2vec_models; heavy imports (TensorFlow) stay inside the commands.
"""
