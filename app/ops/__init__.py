"""Operations: readiness checks and the Prometheus scrape (docs/operations.md). Above the domains (it reads
their tables' levels and asks the PII domain about the vault key), below the entry points that serve it:
the API (`GET /readyz`, `GET /metrics`) and the Celery worker's exporter."""
