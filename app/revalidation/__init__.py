"""Revalidation (issue 19 scope 3): bring a dataset's examples in line with the PII engine, spaCy model,
recognizer set and dedup policy as they are now, in the background. docs/governance.md."""
