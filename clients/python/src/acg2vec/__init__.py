"""acg2vec client: generated stubs in acg2vec.v1, a typed client in acg2vec.client, the bulk indexer in
acg2vec.indexer (extra `indexer`)."""

__version__ = "0.2.0"
