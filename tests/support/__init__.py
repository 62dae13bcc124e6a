"""What only the tests need beside the fixtures in tests/conftest.py, one copy of each:

- servers: in-process server settings, stubs on a channel, the secured server's handles, a server over a repository
- pki: a throwaway certificate authority and the TLS files it signs
- proto_strategies: hypothesis strategies for any protobuf message
- redis_cluster: a local Redis Cluster standing in for a Tendis cluster
- records: an IllustrationRecord with every field set
- source_models: small models in the published formats the importers read
- lite0_reference: a PyTorch EfficientNet-Lite0 to check the Keras port against

What benchmarks share with the tests (the fault rig, server processes, test images, the development models,
service names) is the installed `acg2vec_testing` package (testing/). Modules here may import the acg2vec
packages, acg2vec_testing and each other; never a test module, and nothing outside tests/ imports them.
"""
