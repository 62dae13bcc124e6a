"""The acg2vec.v1 servicers: services.py (the four services), convert.py (protobuf <-> domain types),
streaming.py (batches of a request stream). Convert, delegate to the domain, convert back; no logic of their own.
"""
