"""Telemetry that is not gRPC-specific: the OpenTelemetry tracer (tracing.py), the JSON log format (logs.py) and
the metrics and spans of backend calls (backend_calls.py). The gRPC server's metrics, server spans and access log
live in transport/observability.py. Metric names and labels: docs/deployment.md#monitoring."""
