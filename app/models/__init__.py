"""All ORM models, imported here so Alembic's metadata sees every table."""

from app.models.access import PiiGrant
from app.models.audit import AuditCheckpoint, AuditEvent, AuditHead
from app.models.auth import ApiKey, ApiKeyPreviousSecret, Workspace, WorkspaceMember
from app.models.base import Base
from app.models.dataset import Dataset
from app.models.dedup import DedupDecision, DedupEvalHit, DedupPair, DedupRebuild, DedupSignature, DedupState
from app.models.example import DuplicateLink, Example, ExampleRevision, IngestBatch
from app.models.lineage import (
    ErasureRequest,
    ErasureRetest,
    ErasureRetestStrings,
    ModelVersionFacet,
    ModelVersionTaint,
)
from app.models.pii import PiiFinding, PiiScrub, PiiVaultEntry
from app.models.pipeline import StageLease
from app.models.review import (
    PairwiseJudgment,
    PairwiseVerdict,
    Review,
    ReviewEscalation,
    ReviewLease,
    ReviewSessionRevocation,
    ReviewSuggestion,
)
from app.models.snapshot import Snapshot, SnapshotMember
from app.models.sso import SsoIdentity, SsoLogin, WebSession
from app.models.training import (
    Evaluation,
    EvaluationEvent,
    ModelAlias,
    ModelAliasHistory,
    ModelPolicy,
    ModelVersion,
    RegisteredModel,
    TrainedRevision,
    TrainingCanary,
    TrainingRun,
    TrainingRunEvent,
)
from app.models.validation import ExampleValidation, PiiRecognizerSet, Revalidation

__all__ = [
    "ApiKey",
    "ApiKeyPreviousSecret",
    "AuditCheckpoint",
    "AuditEvent",
    "AuditHead",
    "Base",
    "Dataset",
    "DedupDecision",
    "DedupEvalHit",
    "DedupPair",
    "DedupRebuild",
    "DedupSignature",
    "DedupState",
    "DuplicateLink",
    "ErasureRequest",
    "ErasureRetest",
    "ErasureRetestStrings",
    "Evaluation",
    "EvaluationEvent",
    "Example",
    "ExampleRevision",
    "ExampleValidation",
    "IngestBatch",
    "ModelAlias",
    "ModelAliasHistory",
    "ModelPolicy",
    "ModelVersion",
    "ModelVersionFacet",
    "ModelVersionTaint",
    "PairwiseJudgment",
    "PairwiseVerdict",
    "PiiFinding",
    "PiiGrant",
    "PiiRecognizerSet",
    "PiiScrub",
    "PiiVaultEntry",
    "RegisteredModel",
    "Revalidation",
    "Review",
    "ReviewEscalation",
    "ReviewLease",
    "ReviewSessionRevocation",
    "ReviewSuggestion",
    "Snapshot",
    "SnapshotMember",
    "SsoIdentity",
    "SsoLogin",
    "StageLease",
    "TrainedRevision",
    "TrainingCanary",
    "TrainingRun",
    "TrainingRunEvent",
    "WebSession",
    "Workspace",
    "WorkspaceMember",
]
