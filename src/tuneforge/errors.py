"""User-facing errors: a message that names the file, line or key, and exit code 2 (no traceback)."""

from __future__ import annotations


class UserError(Exception):
    """Bad config, bad data or a missing model: the user can fix it. The CLI prints it and exits 2."""

    exit_code = 2


class ConfigError(UserError):
    pass


class DataError(UserError):
    pass


class ModelError(UserError):
    pass


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; a complete checkpoint was saved. Exit code 128 + signal number."""

    def __init__(self, signum: int, checkpoint: str | None) -> None:
        self.signum = signum
        self.checkpoint = checkpoint
        super().__init__(f"interrupted by signal {signum}; checkpoint: {checkpoint}")


class NonFiniteLoss(UserError):
    """Too many consecutive non-finite losses: training stopped, no non-finite weights saved."""
