"""Prometheus metrics: requests by status, approval and release latency, refusals."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 300, 3600, 86400)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http = Counter("custody_http_responses_total", "HTTP responses",
                            ["method", "route", "status"], registry=self.registry)
        self.requests = Counter("custody_sign_requests_total",
                                "Sign requests reaching a state", ["status"],
                                registry=self.registry)
        self.refusals = Counter("custody_refusals_total", "Refused calls by error code",
                                ["code"], registry=self.registry)
        self.release = Histogram("custody_release_seconds",
                                 "From request creation to execution", registry=self.registry,
                                 buckets=LATENCY_BUCKETS)
        self.approval = Histogram("custody_approval_handling_seconds",
                                  "Time to verify and record one approval (and release)",
                                  registry=self.registry, buckets=LATENCY_BUCKETS)
        self.batch = Histogram("custody_autosign_batch_size",
                               "Auto-tier sign requests signed in one HSM batch",
                               registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 256))
