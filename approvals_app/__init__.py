"""FastAPI service: the TSB-compatible /v1 API, approver endpoints, health and metrics."""
