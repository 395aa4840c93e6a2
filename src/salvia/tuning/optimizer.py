"""The optimizer of one tuning job: an Optuna study rebuilt from the trials the metadata store
holds, so a restarted server goes on where the previous one stopped.

Strategies map to Optuna as follows:

- `Bayesian`: a space-filling start (a Latin hypercube over the ranges: each range cut into as
  many strata as there are start trials, each stratum tried once), then TPE (a constant liar
  while trials run in parallel);
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
import math
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.pruners import BasePruner, HyperbandPruner, MedianPruner, NopPruner
from optuna.samplers import BaseSampler, GridSampler, RandomSampler, TPESampler
from optuna.trial import FrozenTrial, Trial, TrialState, create_trial

from salvia.tuning.space import SearchSpace

optuna.logging.set_verbosity(logging.WARNING)

DEFINITION_PARAM = "TrainingJobDefinition"
# the median rule waits for this many finished trials and this many steps of a running one
MEDIAN_STARTUP_TRIALS = 3
MEDIAN_WARMUP_STEPS = 2
# Trials of the space-filling start before TPE models the results. Chosen on the tuning
# benchmark's objective over 15 seeds (median best log loss after 30 trials, lower is better):
# this start then univariate TPE 0.0968; TPE after 10 random trials 0.0976; scrambled Sobol
# then multivariate TPE 0.0974; multivariate TPE after 5 random trials 0.0990.
STARTUP_TRIALS = 10


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
        tpe = TPESampler(seed=seed, n_startup_trials=0, constant_liar=parallel > 1)
    return LatinHypercubeStart(tpe, STARTUP_TRIALS, seed)


class LatinHypercubeStart(BaseSampler):
    """The first `startup` trials from a Latin hypercube, the rest from `then`.

    Trial n takes row n of the design, and each parameter's column comes from the seed and the
    parameter's name alone, so the design survives a server restart (the study is rebuilt with
    its trials in order) whatever order parameters are asked in. A categorical's strata map
    onto its choices in turn. A warm-started study (`skip_start`) has its parents' results to
    model from the first trial, and skips the design."""

    def __init__(self, then: BaseSampler, startup: int, seed: int | None) -> None:
        self.then = then
        self.startup = startup
        self.seed = seed
        self._skipped = False
        self._columns: dict[str, np.ndarray] = {}

    def skip_start(self) -> None:
        self._skipped = True

    def _unit(self, name: str, row: int) -> float:
        column = self._columns.get(name)
        if column is None:  # a stratum per start trial, in a random order, jittered within
            seed = (zlib.crc32(name.encode()) + (self.seed or 0)) % 2**32
            rng = np.random.RandomState(seed if self.seed is not None else None)
            strata = rng.permutation(self.startup)
            column = (strata + rng.uniform(size=self.startup)) / self.startup
            self._columns[name] = column
        return float(column[row])

    def _starting(self, trial: FrozenTrial) -> bool:
        return trial.number < self.startup and not self._skipped

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        if self._starting(trial):
            return {}
        return self.then.infer_relative_search_space(study, trial)

    def sample_relative(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        search_space: dict[str, BaseDistribution],
    ) -> dict[str, Any]:
        if self._starting(trial):
            return {}
        return self.then.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        if not self._starting(trial):
            return self.then.sample_independent(study, trial, param_name, param_distribution)
        return _from_unit(param_distribution, self._unit(param_name, trial.number))

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.then.before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.then.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.then.reseed_rng()


def _from_unit(distribution: BaseDistribution, unit: float) -> Any:
    """The value at `unit` (0 <= unit < 1) of the way through a distribution's range, on its
    scale (integers as Optuna's samplers draw them: each equally wide on that scale)."""
    if isinstance(distribution, CategoricalDistribution):
        choices = distribution.choices
        return choices[min(int(unit * len(choices)), len(choices) - 1)]
    if isinstance(distribution, IntDistribution):
        return _int_from_unit(distribution, unit)
    if isinstance(distribution, FloatDistribution):
        return _float_from_unit(distribution, unit)
    raise TypeError(f"no Latin hypercube value for {type(distribution).__name__}")


def _int_from_unit(distribution: IntDistribution, unit: float) -> int:
    low, high, step = distribution.low, distribution.high, distribution.step
    if distribution.log:
        lo, hi = math.log(low - 0.5), math.log(high + 0.5)
        value = round(math.exp(lo + unit * (hi - lo)))
    else:
        value = low + min(int(unit * ((high - low) // step + 1)), (high - low) // step) * step
    return int(min(max(value, low), high))


def _float_from_unit(distribution: FloatDistribution, unit: float) -> float:
    low, high = distribution.low, distribution.high
    if distribution.log:
        value = math.exp(math.log(low) + unit * (math.log(high) - math.log(low)))
    elif distribution.step is not None:
        count = round((high - low) / distribution.step)
        value = low + min(int(unit * (count + 1)), count) * distribution.step
    else:
        value = low + unit * (high - low)
    return float(min(max(value, low), high))


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
            if isinstance(self.study.sampler, LatinHypercubeStart):
                self.study.sampler.skip_start()

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
