"""Observability: Prometheus metrics, structured logs and OpenTelemetry traces of the registration flow."""
