"""acg2vec gRPC server: servicers, domain logic and backend adapters."""

__version__ = "0.1.0"
