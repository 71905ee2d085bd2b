"""The training domain's tables, as lineage reads them.

Lineage reads `training_runs`, `model_versions`, the alias table and the per-revision `lineage` rows
directly (one join instead of a service call per row), but does not own them: the training domain's
models define them, and these names are lineage's Core view of those tables.
"""

from __future__ import annotations

from app.models.training import (
    Evaluation,
    ModelAlias,
    ModelAliasHistory,
    ModelVersion,
    TrainedRevision,
    TrainingCanary,
    TrainingRun,
)

training_runs = TrainingRun.__table__
model_versions = ModelVersion.__table__
model_aliases = ModelAlias.__table__
lineage = TrainedRevision.__table__
evaluations = Evaluation.__table__
canaries = TrainingCanary.__table__
alias_history = ModelAliasHistory.__table__
