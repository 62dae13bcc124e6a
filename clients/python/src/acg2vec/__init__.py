"""acg2vec client: generated stubs in acg2vec.v1, a typed client in acg2vec.client."""

__version__ = "0.1.0"
