"""The bulk indexer (`acg2vec index`, or `acg2vec-index` with the client alone): a folder of images or a JSONL
manifest, indexed through StreamIndexIllustrations.

Resumable and idempotent: every acknowledged item is appended to a local journal (id + a hash of the image
bytes, metadata and the server's embedding model versions), so a rerun skips what is done without sending it
(after a model upgrade, nothing: every item goes to the new version's collections); what the journal misses (a kill
before the line was written, a lost journal, another machine) the server answers UNCHANGED without
running the models, because the id's stored content hash already matches. Sharding (`--shard-index`,
`--shard-count`) splits the ids by a stable hash, for Kubernetes Indexed Jobs.

A client of the public API only: sources.py (folder or manifest -> items), journal.py, run.py (the streaming
loop), cli.py and connection.py (the command and its connection flags; needs the `indexer` extra: click, tqdm).
Imports acg2vec.client and acg2vec.v1, never the server.
"""
