"""acg2vec gRPC server. `domain/` (the logic and the ports it needs) imports nothing around it; `backends/`
(adapters) and `transport/` (everything gRPC) import the domain; `app.py` composes them from `settings.py`;
`health.py` reports; `cli/` is the command line; `testing/` holds the TF-Serving emulator."""

__version__ = "0.1.0"
