"""TrainerSettings: the GPU host worker's settings, read from the environment once, at start-up.

The trainer never imports `app`, so this is its own object rather than a section of the service's
Settings; the variable names are the ones the service and docker-compose already use.
"""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class TrainerSettings(BaseSettings):
    # PEDIGREE_TRAINER_KEY, PEDIGREE_TRAINER_GPUS, PEDIGREE_TRAINER_HEARTBEAT_S, ...; the three names the
    # service shares carry their own alias.
    model_config = SettingsConfigDict(env_prefix="PEDIGREE_TRAINER_", populate_by_name=True, extra="forbid")

    api_url: str = Field("http://localhost:8000", validation_alias="PEDIGREE_API_URL")
    key: str = Field("", validate_default=True, repr=False)
    redis_url: str = Field("redis://localhost:6379/0", validation_alias="PEDIGREE_REDIS_URL")
    artifact_root: str = Field("./var/artifacts", validation_alias="PEDIGREE_ARTIFACT_ROOT")
    gpus: int | None = Field(None, ge=0)  # None: count them
    heartbeat_s: float = Field(10.0, gt=0)
    flush_s: float = Field(2.0, gt=0)
    cancel_grace_s: float = Field(60.0, ge=0)

    @field_validator("key", mode="before")
    @classmethod
    def _key_given(cls, v: object) -> object:
        # Without a key every call to the API is a 401, found out only once a run is claimed; better
        # that the worker refuses to start.
        if v is None or (isinstance(v, str) and not v.strip()):
            raise ValueError(
                "PEDIGREE_TRAINER_KEY is missing or empty: set it to a trainer-role API key "
                "(pedigree keys create --role trainer --name <host>)"
            )
        return v

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpus_blank_is_unset(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v
