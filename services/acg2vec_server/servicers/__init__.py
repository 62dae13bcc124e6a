"""gRPC servicers: proto <-> domain conversion and status mapping, nothing else."""
