"""Recovering a training run whose loss diverges, before the bad step reaches the model.

A step's loss diverges when it is NaN or infinite, or more than ``EXPLODING`` times the larger
of the run's first loss and the median of its recent ones (a run that blows up climbs through
10x, 100x, 10^5x within a few steps; a dense tile among sparse ones stays within a few times
the first loss, which is about ln 2 times the mean pixel weight). The run then goes back to
its last calm state, kept in memory every ``SNAPSHOT_EVERY`` steps (model and optimiser: one
copy of each), halves its learning rate from there on, and says so; after ``MAX_RECOVERIES``
recoveries it stops with TrainingDiverged. Runs that never diverge are not changed at all.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections import deque

import torch
import torch.distributed as dist

EXPLODING = 10.0
RECENT = 50  # losses the median is taken over
SNAPSHOT_EVERY = 25
MAX_RECOVERIES = 3


class TrainingDiverged(RuntimeError):
    """The loss diverged more often than the run could recover: it stopped before the last
    divergent step changed the model."""


class DivergenceGuard:
    """Watches each step's loss (before the optimiser applies it), keeps the last calm state,
    and restores it when the loss diverges. ``recoveries`` (a list the run's history keeps)
    records each recovery; the learning rate is scaled by 0.5 for each."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, recoveries: list, world: int = 1):
        self.model, self.optimizer, self.recoveries, self.world = model, optimizer, recoveries, world
        self.first: float | None = None
        self.recent: deque[float] = deque(maxlen=RECENT)
        self.calm_since_snapshot = True
        self.snapshot = None

    @property
    def lr_scale(self) -> float:
        return 0.5 ** len(self.recoveries)

    def limit(self) -> float:
        """The loss above which a step diverges."""
        if self.first is None:
            return math.inf
        return EXPLODING * max(self.first, statistics.median(self.recent) if self.recent else self.first)

    def check(self, value: float, step: int) -> bool:
        """Whether the step may go on (False: the run went back to its last calm state, so the
        caller skips the optimiser's step). Raises TrainingDiverged after MAX_RECOVERIES."""
        if self.snapshot is None or (step % SNAPSHOT_EVERY == 0 and self.calm_since_snapshot):
            self._take_snapshot(step)
        diverged = not math.isfinite(value) or value > self.limit()
        if self.world > 1:
            flag = torch.tensor(int(diverged), device=next(self.model.parameters()).device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            diverged = bool(flag.item())
        if not diverged:
            if self.first is None:
                self.first = value
            self.calm_since_snapshot &= value <= 0.5 * self.limit()
            self.recent.append(value)
            return True
        reason = (f"the loss became {value}" if not math.isfinite(value) else
                  f"the loss rose to {value:.4g}, over {EXPLODING:g} times its usual {self.limit() / EXPLODING:.4g}"
                  if value > self.limit() else "another process's loss diverged")
        if len(self.recoveries) >= MAX_RECOVERIES:
            raise TrainingDiverged(f"{reason} at step {step + 1}, after {MAX_RECOVERIES} recoveries at halved learning "
                                   "rates; training stopped before that step changed the model")
        self._restore_snapshot()
        self.recoveries.append({"step": step + 1, "reason": reason, "restored_step": self.snapshot["step"]})
        return False

    def message(self) -> str:
        last = self.recoveries[-1]
        return (f"step {last['step']}: {last['reason']}; went back to the model of step {last['restored_step']} "
                f"and halved the learning rate (now {self.lr_scale:g} of the schedule's)")

    def _take_snapshot(self, step: int) -> None:
        """The state after ``step`` steps."""
        self.snapshot = {"model": copy.deepcopy(self.model.state_dict()),
                         "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                         "step": step}
        self.calm_since_snapshot = True

    def _restore_snapshot(self) -> None:
        self.model.load_state_dict(self.snapshot["model"])
        self.optimizer.load_state_dict(copy.deepcopy(self.snapshot["optimizer"]))
