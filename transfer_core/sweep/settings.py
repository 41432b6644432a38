"""What a sweep trains: every option of ``transfer-core sweep`` beyond the config and the executor."""
from __future__ import annotations

from dataclasses import dataclass

from transfer_core.settings import Settings, setting


@dataclass(frozen=True)
class SweepSettings(Settings):
    """How many subset runs a sweep holds, its name, and what each run keeps; validated at construction."""

    n_models: int = setting(40, "Models (subset runs) the sweep should have. Rerunning trains only the missing ones; a "
                                "larger number grows the sweep and reuses the runs it has.", min=1)
    sweep_id: str | None = setting(None, "Name the sweep yourself. Unset: sweep-<its step key>, so the same command "
                                         "always means the same sweep. A stored sweep of that name must have the same "
                                         "config.")
    log_checkpoint: bool = setting(False, "Log each transferred model as model.pt (about 0.3 MB per run for the quick "
                                          "profile).")
