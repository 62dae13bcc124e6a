"""Domain logic: knows neither gRPC nor a concrete backend, only the backend interfaces."""
