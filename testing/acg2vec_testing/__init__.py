"""The test rig shared by tests/ and benchmarks/, one copy of each part (an editable install of the development
venv: paths point into this checkout).

- paths: the checkout, the shared anime images, tests/data/sample.png
- images: small deterministic pictures made in the test
- model_repository: the development models (built once per model-code version) and private copies of them
- services: the served gRPC service names, from the generated protos' descriptors
- waiting: polling for a condition and for gRPC health
- image_fuzz: real image files in many formats, and ways to damage them
- rig: every backend and the server as killable processes, a recorded concurrent load, outages

May import the acg2vec packages (acg2vec, acg2vec_server, acg2vec_models) and their dependencies; never tests/ or
benchmarks/, which import it. What only tests need lives in tests/support/.
"""
