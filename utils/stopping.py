"""When training ends: EarlyStopping (--patience) and TimeBudget (--time HOURS)."""

import math
import time

from utils.general import LOGGER


class EarlyStopping:
    """Stop when fitness has not strictly improved for `patience` validated epochs."""

    def __init__(self, patience=100):
        self.best_fitness, self.best_epoch = -math.inf, 0
        self.patience = patience or math.inf

    def __call__(self, epoch, fitness):
        if fitness > self.best_fitness:
            self.best_epoch, self.best_fitness = epoch, fitness
        stop = (epoch - self.best_epoch) >= self.patience
        if stop:
            LOGGER.info(f"Stopping training early as no improvement observed in last {self.patience} epochs. "
                        f"Best results observed at epoch {self.best_epoch}, best model saved as best.pt.")
        return stop


class TimeBudget:
    """--time HOURS: as many epochs as fit in a wall-clock budget (as the ultralytics trainer's `time`).

    After each epoch's training, `plan(epoch)` divides the budget by the mean cost of an epoch so far
    (training plus the end-of-epoch work: validation, checkpoints) and returns the total number of epochs
    that fit, never fewer than those already trained. The engine rebuilds its LR schedule to span that total,
    so the schedule still ends at lrf however long the machine takes; the count settles after a few epochs.
    The budget counts from `start()` (a resumed run gets the whole budget again for its remaining epochs).
    """

    def __init__(self, hours, start_epoch=0, clock=None):
        self.seconds = float(hours) * 3600
        self.start_epoch = start_epoch
        self.clock = clock or time.monotonic
        self.t0 = None
        self.end_costs = []  # seconds of each finished epoch's end-of-epoch work
        self._end_t0 = None
        self._logged = None  # the last total logged

    def start(self):
        self.t0 = self.clock()

    def elapsed(self):
        return self.clock() - self.t0

    def plan(self, epoch):
        """Total epochs (counted from 0) that fit, given that epochs start_epoch..epoch are trained and
        `epoch`'s end-of-epoch work is still to come (estimated as the mean of the earlier ones)."""
        done = epoch + 1 - self.start_epoch
        pending = sum(self.end_costs) / len(self.end_costs) if self.end_costs else 0.0
        per_epoch = max((self.elapsed() + pending) / done, 1e-9)
        fit = int(self.seconds // per_epoch)
        return self.start_epoch + max(done, fit)

    def end_work_started(self):
        self._end_t0 = self.clock()

    def end_work_finished(self):
        if self._end_t0 is not None:
            self.end_costs.append(self.clock() - self._end_t0)
            self._end_t0 = None

    def worth_logging(self, epochs):
        """The first plan, and later ones that differ by 10% or more from the last logged (-> True once)."""
        if self._logged is not None and abs(epochs - self._logged) < 0.1 * self._logged:
            return False
        self._logged = epochs
        return True

    def describe(self, epoch, epochs):
        """One log line: the budget, the time so far and the total epochs it gives."""
        return (f"time budget {self.seconds / 3600:g} h ({self.seconds:.0f} s): {self.elapsed():.0f} s for "
                f"{epoch + 1 - self.start_epoch} epoch(s) -> {epochs} epochs in all; the LR schedule spans them")
