"""Adapters to the backends, one module each: inprocess.py and tfserving.py (InferenceBackend), milvus.py
(VectorStore), redis.py (MetadataStore), embedded_redis.py (the local Redis-protocol server), signatures.py
(TensorFlow SignatureDefs as plain types).

May import the domain (ports, types, errors) and the backends' own libraries; the domain never imports this.
"""
