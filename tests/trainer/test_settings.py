"""TrainerSettings: the worker's environment, and its refusal to start without a key."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from trainer.settings import TrainerSettings

ENV = ("PEDIGREE_API_URL", "PEDIGREE_TRAINER_KEY", "PEDIGREE_REDIS_URL", "PEDIGREE_ARTIFACT_ROOT",
       "PEDIGREE_TRAINER_GPUS")  # fmt: skip


@pytest.fixture
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_reads_the_names_the_service_uses(clean_env):
    clean_env.setenv("PEDIGREE_API_URL", "http://api:8000")
    clean_env.setenv("PEDIGREE_TRAINER_KEY", "pdg_trainer_key")
    clean_env.setenv("PEDIGREE_REDIS_URL", "redis://redis:6379/2")
    clean_env.setenv("PEDIGREE_ARTIFACT_ROOT", "s3://bucket/adapters")
    clean_env.setenv("PEDIGREE_TRAINER_GPUS", "4")
    s = TrainerSettings()
    assert (s.api_url, s.key, s.redis_url, s.artifact_root, s.gpus) == (
        "http://api:8000", "pdg_trainer_key", "redis://redis:6379/2", "s3://bucket/adapters", 4)  # fmt: skip
    assert "pdg_trainer_key" not in repr(s)  # the key stays out of logs and tracebacks


def test_defaults_with_only_a_key(clean_env):
    clean_env.setenv("PEDIGREE_TRAINER_KEY", "k")
    clean_env.setenv("PEDIGREE_TRAINER_GPUS", "")  # docker-compose passes unset variables as ""
    s = TrainerSettings()
    assert (s.api_url, s.redis_url, s.artifact_root, s.gpus) == (
        "http://localhost:8000", "redis://localhost:6379/0", "./var/artifacts", None)  # fmt: skip
    assert (s.heartbeat_s, s.flush_s, s.cancel_grace_s) == (10.0, 2.0, 60.0)


@pytest.mark.parametrize("key", [None, "", "   "])
def test_a_missing_or_empty_key_is_refused(clean_env, key):
    if key is not None:
        clean_env.setenv("PEDIGREE_TRAINER_KEY", key)
    with pytest.raises(ValidationError, match="PEDIGREE_TRAINER_KEY is missing or empty"):
        TrainerSettings()


def test_a_bad_gpu_count_is_refused(clean_env):
    clean_env.setenv("PEDIGREE_TRAINER_KEY", "k")
    clean_env.setenv("PEDIGREE_TRAINER_GPUS", "-1")
    with pytest.raises(ValidationError, match="gpus"):
        TrainerSettings()


@pytest.mark.worker
def test_the_celery_worker_refuses_to_start_without_a_key(tmp_path):
    """`celery -A trainer.worker worker` exits at start-up, naming the variable, instead of taking runs
    it can only fail with 401s."""
    env = {k: v for k, v in os.environ.items() if k not in ENV}
    env["PEDIGREE_REDIS_URL"] = "redis://127.0.0.1:1/0"  # nothing listens: it must not get that far
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "trainer.worker", "worker", "-Q", "train", "--loglevel", "WARNING"],
        cwd=repo, env=env, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "PEDIGREE_TRAINER_KEY is missing or empty" in proc.stderr.decode(errors="replace")
