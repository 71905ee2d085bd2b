"""The one error type the trainer raises; its code is what the service stores on a failed run."""

from __future__ import annotations

CODES = frozenset(
    {
        "bad_base_model",
        "manifest_mismatch",
        "out_of_memory",
        "qlora_unavailable",
        "invalid_hyperparameters",
        "invalid_data",
        "invalid_params",
        "method_format_mismatch",
        "cancelled",
        "internal_error",
    }
)


class TrainError(Exception):
    def __init__(self, code: str, message: str):
        # An unknown code would reach the API as an unexplained failure; fail loudly here instead.
        if code not in CODES:
            raise ValueError(f"unknown TrainError code {code!r}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def as_dict(self) -> dict:
        return {"code": self.code, "message": self.message}
