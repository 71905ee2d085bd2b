"""Replacement operators applied within one example (placeholder, surrogate, mask, keyed hash, redact)."""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache

from app.pii.schemas import OperatorSpec, OperatorType, PiiPolicy


@lru_cache(maxsize=1)
def _faker():
    from faker import Faker  # import here: 0.3 s, and only surrogate policies need it

    return Faker("en_US")


_SURROGATES = {
    # First and last name only: Faker's name() adds "Dr."/"PhD" now and then, which reads as a change of
    # person in a word problem or a dialogue.
    "PERSON": lambda f: f"{f.first_name()} {f.last_name()}",
    "EMAIL_ADDRESS": lambda f: f.email(),
    "PHONE_NUMBER": lambda f: f.phone_number(),
    "CREDIT_CARD": lambda f: f.credit_card_number(),
    "IBAN_CODE": lambda f: f.iban(),
    "US_SSN": lambda f: f.ssn(),
    "US_ITIN": lambda f: f.itin(),
    "IP_ADDRESS": lambda f: f.ipv4(),
    "LOCATION": lambda f: f.city(),
    "STREET_ADDRESS": lambda f: f.street_address(),
    "ORGANIZATION": lambda f: f.company(),
    "DATE_TIME": lambda f: f.date(),
    "DATE_OF_BIRTH": lambda f: f.date_of_birth().isoformat(),
    "URL": lambda f: f.url(),
    "US_PASSPORT": lambda f: f.passport_number(),
    "US_BANK_NUMBER": lambda f: f.bban(),
    "NRP": lambda f: f.country(),
}


class ExampleOperators:
    """Applies the policy's operators within one example; surrogates stay consistent inside it."""

    def __init__(self, policy: PiiPolicy, hash_key: bytes, example_key: str):
        self.policy = policy
        self.hash_key = hash_key
        self.seed = int.from_bytes(hmac.new(hash_key, example_key.encode(), hashlib.sha256).digest()[:8], "big")
        self._surrogates: dict[tuple[str, str], str] = {}
        self._faker_seeded = False

    def spec(self, entity_type: str) -> OperatorSpec:
        return self.policy.operator_for(entity_type)

    def replace(self, entity_type: str, value: str) -> str:
        spec = self.spec(entity_type)
        match spec.type:
            case OperatorType.placeholder:
                return f"<{entity_type}>"
            case OperatorType.redact:
                return ""
            case OperatorType.mask:
                keep = spec.keep_last or 0
                keep = min(keep, len(value))
                return spec.masking_char * (len(value) - keep) + (value[len(value) - keep :] if keep else "")
            case OperatorType.hash:
                digest = hmac.new(self.hash_key, f"{entity_type}:{_normalise(value)}".encode(), hashlib.sha256)
                return f"<{entity_type}:{digest.hexdigest()[:12]}>"
            case OperatorType.surrogate:
                return self._surrogate(entity_type, value)
        raise AssertionError(spec.type)

    def _surrogate(self, entity_type: str, value: str) -> str:
        key = (entity_type, _normalise(value))
        found = self._surrogates.get(key)
        if found is not None:
            return found
        make = _SURROGATES.get(entity_type)
        if make is None:
            found = f"{entity_type}_{sum(1 for k in self._surrogates if k[0] == entity_type) + 1}"
        else:
            fake = _faker()
            taken = set(self._surrogates.values())
            # Reseed from (example, value): the fake depends only on the example and the value, not on
            # the order values were met, so re-scrubbing after a reviewer edit keeps the same fakes. Two
            # values never share a fake within an example (two people made one would change its meaning):
            # on a clash the later value draws again, the one place where order matters.
            for attempt in range(20):
                salt = repr(key) if attempt == 0 else f"{key!r}:{attempt}"
                fake.seed_instance(self.seed ^ int.from_bytes(hashlib.sha256(salt.encode()).digest()[:8], "big"))
                # A lone first name ("Tom has 3 apples") gets a lone first name.
                found = fake.first_name() if entity_type == "PERSON" and len(value.split()) == 1 else make(fake)
                if found not in taken:
                    break
        self._surrogates[key] = found
        return found


def _normalise(value: str) -> str:
    return " ".join(value.split()).casefold()
