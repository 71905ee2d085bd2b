"""PII engine settings (env prefix PEDIGREE_PII_). Light on purpose: the API reads them without importing
Presidio or spaCy."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

from app.core.config import VAR_DIR

Mode = Literal["ner", "pattern_only"]

# libphonenumber matching runs once per region over every text; each region costs about as much as the
# rest of the pattern recognizers together, so the list is explicit and short. Numbers with a +country
# prefix are found whatever the list; LoosePhoneRecognizer covers other national formats with context.
DEFAULT_PHONE_REGIONS = ("US", "GB", "DE", "FR", "IN")


class PiiSettings(BaseSettings):
    """PII engine settings (env prefix PEDIGREE_PII_)."""

    model_config = SettingsConfigDict(env_prefix="PEDIGREE_PII_", extra="ignore")

    spacy_model: str = "en_core_web_sm"
    # "pattern_only" runs without NER: PERSON and LOCATION are then found only through cues. It must be
    # chosen explicitly, and it is written on every finding.
    mode: Mode = "ner"
    phone_regions: tuple[str, ...] = DEFAULT_PHONE_REGIONS
    custom_recognizers: bool = True
    # The first-name gazetteer recognizer (part of the custom set; off only to measure what it adds).
    name_gazetteer: bool = True
    batch_size: int = 64


class PiiServiceSettings(PiiSettings):
    # "kid:base64(32 bytes),..." newest first. Unset: embedded mode uses a key file, other modes refuse.
    vault_keys: str | None = None
    vault_key_file: Path = VAR_DIR / "pii-vault.key"

    def engine_settings(self) -> PiiSettings:
        return PiiSettings(**self.model_dump(include=set(PiiSettings.model_fields)))
