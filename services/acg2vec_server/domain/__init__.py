"""The domain: model calls and batching, tagging, input checks, stored illustrations (consistency, indexing,
search), the errors callers see, and the ports (interfaces) the backends implement.

May import: the standard library, numpy, Pillow, prometheus_client, tokenizers and acg2vec_models' light modules
(vocabularies, bins, tokens). Never grpc, TensorFlow, redis or pymilvus (tests/test_layout.py checks), never
`backends/`, `transport/` or `settings`: app.py builds the domain from plain values.
"""
