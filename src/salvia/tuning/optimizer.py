"""The optimizer of one tuning job: an Optuna study rebuilt from the trials the metadata store
holds, so a restarted server goes on where the previous one stopped.

Strategies map to Optuna as follows:

- `Bayesian`: TPE (multivariate; a constant liar while trials run in parallel);
- `Random`: random sampling;
- `Grid`: every combination of the categorical ranges, in a seeded random order;
- `Hyperband`: TPE, with Optuna's Hyperband pruner over the objective's intermediate values
  (one step per value the job logs; `MinResource`/`MaxResource` count steps).

`TrainingJobEarlyStoppingType` `Auto` adds the median rule (Optuna's median pruner): a running
trial whose best intermediate value is worse than the median of finished trials' values at the
same step is stopped.

A study is in memory and owned by one thread; it is never the source of truth. Each trial's
parameters and Optuna bookkeeping (`system_attrs`) are stored with the tuning job before its
training job starts, and its results are the training job's own metrics.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.pruners import BasePruner, HyperbandPruner, MedianPruner, NopPruner
from optuna.samplers import BaseSampler, GridSampler, RandomSampler, TPESampler
from optuna.trial import FrozenTrial, Trial, TrialState, create_trial

from salvia.tuning.space import SearchSpace

optuna.logging.set_verbosity(logging.WARNING)

DEFINITION_PARAM = "TrainingJobDefinition"
# the median rule waits for this many finished trials and this many steps of a running one
MEDIAN_STARTUP_TRIALS = 3
MEDIAN_WARMUP_STEPS = 2
TPE_STARTUP_TRIALS = 5


@dataclass(frozen=True)
class Definition:
    """One training job definition's search space, as the optimizer sees it."""

    name: str
    space: SearchSpace
    maximize: bool


@dataclass
class PastTrial:
    """A trial as stored: its Optuna parameters and what its training job reported."""

    params: dict[str, Any]
    system_attrs: dict[str, Any] = field(default_factory=dict)
    state: str = "RUNNING"  # RUNNING | COMPLETE | PRUNED | FAIL
    value: float | None = None  # the objective as the study compares it (see `signed`)
    intermediate: dict[int, float] = field(default_factory=dict)


def make_sampler(
    strategy: str, definitions: Sequence[Definition], seed: int | None, parallel: int
) -> BaseSampler:
    if strategy == "Random":
        return RandomSampler(seed=seed)
    if strategy == "Grid":
        return _GridSampler(definitions[0].space.grid(), seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return TPESampler(
            seed=seed,
            n_startup_trials=TPE_STARTUP_TRIALS,
            multivariate=True,
            group=len(definitions) > 1,
            constant_liar=parallel > 1,
        )


class _GridSampler(GridSampler):
    """Optuna's grid sampler, minus its `study.stop()` once the grid is done: that works only
    inside `Study.optimize`, and the tuning engine asks and tells on its own."""

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        return None


def make_pruner(strategy: str, early_stopping: str, hyperband: Mapping[str, Any]) -> BasePruner:
    if strategy == "Hyperband":
        return HyperbandPruner(
            min_resource=int(hyperband.get("MinResource") or 1),
            max_resource=int(hyperband.get("MaxResource") or 0) or "auto",
            reduction_factor=3,
        )
    if early_stopping == "Auto":
        return MedianPruner(
            n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=MEDIAN_WARMUP_STEPS
        )
    return NopPruner()


class Optimizer:
    """Asks for new trials and learns from finished ones. Not thread-safe: one owner thread."""

    def __init__(
        self,
        definitions: Sequence[Definition],
        sampler: BaseSampler,
        pruner: BasePruner,
    ) -> None:
        self.definitions = list(definitions)
        # the study always maximizes; a Minimize objective is negated (`signed`)
        self.study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
        self.live: dict[str, Trial] = {}
        self._reported: dict[str, int] = {}

    # --- rebuilding -------------------------------------------------------------------------

    def add(self, key: str, past: PastTrial) -> None:
        """Add a stored trial; a RUNNING one becomes live again under `key`."""
        distributions = self._distributions(past.params)
        params = {k: v for k, v in past.params.items() if k in distributions}
        state = TrialState[past.state]
        value = past.value if state is TrialState.COMPLETE else None
        if state is TrialState.COMPLETE and value is None:
            state = TrialState.FAIL
        frozen = create_trial(
            state=state,
            value=value,
            params=params,
            distributions=distributions,
            system_attrs=dict(past.system_attrs),
            intermediate_values=dict(past.intermediate) if state.is_finished() else None,
        )
        self.study.add_trial(frozen)
        if not state.is_finished():
            trial_id = self.study._storage.get_all_trials(self.study._study_id)[-1]._trial_id
            self.live[key] = Trial(self.study, trial_id)
            for step, step_value in sorted(past.intermediate.items()):
                self.report(key, step, step_value)

    def add_prior(self, past: PastTrial) -> None:
        """A parent job's finished trial (warm start): knowledge, not one of this job's trials."""
        if past.value is not None and self._distributions(past.params):
            self.add("", PastTrial(past.params, {}, "COMPLETE", past.value))

    def _distributions(self, params: Mapping[str, Any]) -> dict[str, BaseDistribution]:
        found: dict[str, BaseDistribution] = {}
        if len(self.definitions) > 1 and DEFINITION_PARAM in params:
            found[DEFINITION_PARAM] = self._definition_distribution()
        for definition in self.definitions:
            for item in definition.space.ranges:
                if item.key in params:
                    found[item.key] = item.distribution()
        return found

    def _definition_distribution(self) -> CategoricalDistribution:
        return CategoricalDistribution([d.name for d in self.definitions])

    # --- asking and telling -----------------------------------------------------------------

    def ask(self, key: str) -> tuple[int, dict[str, Any], dict[str, Any]]:
        """A new live trial: (definition index, Optuna params, system attrs to store)."""
        trial = self.study.ask()
        index = 0
        if len(self.definitions) > 1:
            chosen = trial.suggest_categorical(DEFINITION_PARAM, [d.name for d in self.definitions])
            index = [d.name for d in self.definitions].index(str(chosen))
        for item in self.definitions[index].space.ranges:
            item.suggest(trial)
        self.live[key] = trial
        attrs = self.study._storage.get_trial_system_attrs(trial._trial_id)
        return index, dict(trial.params), _jsonable(attrs)

    def report(self, key: str, step: int, value: float) -> bool:
        """Record an intermediate objective value (already signed); True: stop the trial."""
        trial = self.live.get(key)
        if trial is None or step <= self._reported.get(key, -1):
            return False
        self._reported[key] = step
        trial.report(value, step)
        return bool(trial.should_prune())

    def tell(self, key: str, state: str, value: float | None) -> None:
        trial = self.live.pop(key, None)
        self._reported.pop(key, None)
        if trial is None:
            return
        if state == "COMPLETE" and value is not None:
            self.study.tell(trial, value)
        elif state == "PRUNED":
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            self.study.tell(trial, state=TrialState.FAIL)

    def grid_exhausted(self) -> bool:
        sampler = self.study.sampler
        return isinstance(sampler, GridSampler) and sampler.is_exhausted(self.study)

    def finished(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def signed(value: float, maximize: bool) -> float:
    return value if maximize else -value


def _jsonable(attrs: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if isinstance(value, Mapping):
            out[key] = {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
        else:
            out[key] = value
    return out
