"""Prometheus metrics, defined once; every module increments these and nothing else.

Labels never carry patient data: endpoints are path templates, not concrete paths.
What the state database knows (a job's last success and latest outcome, quarantined rows,
disabled sinks) is read at scrape time instead: `syncd.state_metrics`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

JOB_RUNS = Counter(
    "syncd_job_runs",
    "Job runs by job and outcome (ok, partial, failed, locked, interrupted)",
    ["job", "outcome"],
    registry=REGISTRY,
)
JOB_DURATION = Histogram(
    "syncd_job_duration_seconds", "Job run duration", ["job"], registry=REGISTRY
)
API_CALLS = Counter(
    "syncd_api_calls",
    "Voxares API calls by endpoint template and status (status 0 = no response)",
    ["method", "endpoint", "status"],
    registry=REGISTRY,
)
API_RETRIES = Counter(
    "syncd_api_retries", "Voxares API retries scheduled", ["endpoint"], registry=REGISTRY
)
RATE_LIMIT_WAIT = Counter(
    "syncd_rate_limit_wait_seconds",
    "Seconds spent waiting for the client-side rate limit",
    registry=REGISTRY,
)
PATIENTS = Counter(
    "syncd_patients",
    "Patients handled by the push job, by result "
    "(created, updated, unchanged, quarantined, failed)",
    ["result"],
    registry=REGISTRY,
)
HL7_MESSAGES = Counter(
    "syncd_hl7_messages",
    "HL7 v2 messages by outcome (accepted, duplicate, rejected on receipt; "
    "applied, ignored, quarantined by the apply job)",
    ["outcome"],
    registry=REGISTRY,
)
WATERMARK_LAG = Gauge(
    "syncd_poller_watermark_lag_seconds",
    "Server time minus the poller watermark",
    ["stream"],
    registry=REGISTRY,
)
SWEEP_FOUND = Counter(
    "syncd_poller_sweep_found_total",
    "Submission versions the reconciliation sweep found that polling had missed",
    ["stream"],
    registry=REGISTRY,
)
SWEEP_LATENESS = Gauge(
    "syncd_poller_sweep_max_lateness_seconds",
    "How late (server time since its updatedAt) the latest sweep's most overdue find was",
    ["stream"],
    registry=REGISTRY,
)
OUTBOX_BACKLOG = Gauge(
    "syncd_outbox_backlog", "Deliveries not yet delivered, by sink", ["sink"], registry=REGISTRY
)
OUTBOX_OLDEST_AGE = Gauge(
    "syncd_outbox_oldest_age_seconds",
    "Age of the oldest undelivered event, by sink",
    ["sink"],
    registry=REGISTRY,
)
DEAD_LETTERS = Gauge(
    "syncd_outbox_dead_letters", "Dead-lettered deliveries, by sink", ["sink"], registry=REGISTRY
)
EVENTS_DELIVERED = Counter(
    "syncd_outbox_delivered", "Events delivered, by sink", ["sink"], registry=REGISTRY
)
MESSAGES = Gauge(
    "syncd_messages", "SMS requests by state (including unknown)", ["state"], registry=REGISTRY
)
