"""The Voxares API client: `VoxaresClient`, its models, retry policy and limits.

Every other part of the daemon talks to Voxares through these names only.
"""

from syncd.voxares.client import Timeouts, VoxaresClient
from syncd.voxares.limits import ClientLimits, Limiter, RateLimiter, limiter_for
from syncd.voxares.models import (
    ApiErrorBody,
    Document,
    Form,
    FormRef,
    Message,
    Page,
    Patient,
    PatientUpsert,
    PracticeTemplate,
    SendMessage,
    SubmissionDetail,
    SubmissionFilters,
    SubmissionPatient,
    SubmissionSummary,
    UpsertResult,
)
from syncd.voxares.retry import RetryPolicy

__all__ = [
    "ApiErrorBody",
    "ClientLimits",
    "Document",
    "Form",
    "FormRef",
    "Limiter",
    "Message",
    "Page",
    "Patient",
    "PatientUpsert",
    "PracticeTemplate",
    "RateLimiter",
    "RetryPolicy",
    "SendMessage",
    "SubmissionDetail",
    "SubmissionFilters",
    "SubmissionPatient",
    "SubmissionSummary",
    "Timeouts",
    "UpsertResult",
    "VoxaresClient",
    "limiter_for",
]
