"""Cross-reference checks over a rendered overlay (a list of Kubernetes objects), one module per subject:
common (every workload), server, network_policy, indexer, tfserving, tendis, milvus, security; `objects` and
`settings` are what they read the overlay and the server's Settings with.

Each check returns a list of problems (strings); an empty list means the overlay passes. The tests
(test_manifests.py, test_dockerfile.py) run every check on the real overlays and, to prove that the checks can
fail, on deliberately broken copies. The modules import only jsonschema, the standard library and each other (the
server's settings are read from its source, not imported).
"""
