"""LightGBM as SageMaker's built-in (JumpStart) LightGBM algorithm: its hyperparameter names,
defaults and ranges (DG lightgbm-hyperparameters), `train` and optional `validation` channels in
CSV (no header, label first) or parquet, and the problem type detected from the labels
(`salvia.algorithms.tabular`): regression (`regression` objective, `rmse` metric), binary
(`binary`, `binary_logloss`) or multiclass (`multiclass`, `multi_logloss`).

Each iteration logs `[i]\\ttrain-<metric>:<v>\\tvalidation-<metric>:<v>`, read by the
`train:<metric>`/`validation:<metric>` definitions. Early stopping watches the validation
channel when there is one. The model is LightGBM's text format, `model.txt` in SM_MODEL_DIR
(the best iteration when early stopping ended the training), next to `problem.json`; SageMaker's
own artifact is a pickle, which this one does not reproduce.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from salvia.algorithms import tabular
from salvia.algorithms.base import (
    AlgorithmError,
    AlgorithmSpec,
    Param,
    TrainingContext,
    run_training,
)

MODEL_FILE = "model.txt"
METRICS = (
    "rmse",
    "l1",
    "l2",
    "huber",
    "fair",
    "binary_logloss",
    "binary_error",
    "auc",
    "average_precision",
    "multi_logloss",
    "multi_error",
    "auc_mu",
    "cross_entropy",
)
_TRUE_FALSE = ("True", "False")

PARAMS = (
    Param("num_boost_round", int, default=100, low=1),
    Param("early_stopping_rounds", int, default=10),
    Param("metric", str, default="auto", choices=("auto", *METRICS)),
    Param("learning_rate", float, default=0.1, low=0, high=1),
    Param("num_leaves", int, default=64, low=2, high=131072),
    Param("feature_fraction", float, default=0.9, low=0, high=1),
    Param("bagging_fraction", float, default=0.9, low=0, high=1),
    Param("bagging_freq", int, default=1, low=0),
    Param("max_depth", int, default=6),
    Param("min_data_in_leaf", int, default=3, low=0),
    Param("max_delta_step", float, default=0.0),
    Param("lambda_l1", float, default=0.0, low=0),
    Param("lambda_l2", float, default=0.0, low=0),
    Param("boosting", str, default="gbdt", choices=("gbdt", "rf", "dart", "goss")),
    Param("min_gain_to_split", float, default=0.0, low=0),
    Param("scale_pos_weight", float, default=1.0, low=0),
    Param("tree_learner", str, default="serial", choices=("serial", "feature", "data", "voting")),
    Param("feature_fraction_bynode", float, default=1.0, low=0, high=1),
    Param("is_unbalance", str, default="False", choices=_TRUE_FALSE),
    Param("max_bin", int, default=255, low=2),
    Param("tweedie_variance_power", float, default=1.5, low=1, high=2),
    Param("num_threads", int, default=0, low=0),
    Param("verbosity", int, default=1),
    Param("use_dask", str, default="False", choices=_TRUE_FALSE),
)
# open ends of the documented ranges: (0.0, 1.0) and [1.0, 2.0)
_OPEN = {
    "learning_rate": (0, 1),
    "feature_fraction": (0, None),
    "bagging_fraction": (0, None),
    "feature_fraction_bynode": (0, None),
    "scale_pos_weight": (0, None),
    "tweedie_variance_power": (None, 2),
}

SPEC = AlgorithmSpec(
    name="lightgbm",
    repositories=(),
    params=PARAMS,
    train="salvia.algorithms.lightgbm:train",
    channels=("train", "validation"),
    content_types=tabular.CONTENT_TYPES,
    metrics=tabular.metric_definitions(METRICS),
    module="lightgbm",
    extra="lightgbm",
    inference="salvia.algorithms.lightgbm",
)


def train() -> None:
    run_training(SPEC, _train)


def lightgbm_params(hps: dict[str, Any], problem: tabular.Problem) -> dict[str, Any]:
    """The parameters of `lightgbm.train` for the hyperparameters and the problem."""
    for name, (low, high) in _OPEN.items():
        if hps[name] in (low, high):
            raise AlgorithmError(f"Hyperparameter {name}: {hps[name]} is outside its open range.")
    if hps["is_unbalance"] == "True" and hps["scale_pos_weight"] != 1.0:
        raise AlgorithmError("Hyperparameter is_unbalance cannot be used with scale_pos_weight.")
    if hps["use_dask"] == "True":
        raise AlgorithmError(
            "Hyperparameter use_dask: distributed Dask training is not "
            "supported by this algorithm image."
        )
    objective, metric = {
        "regression": ("regression", "rmse"),
        "binary": ("binary", "binary_logloss"),
        "multiclass": ("multiclass", "multi_logloss"),
    }[problem.kind]
    params = {
        k: v
        for k, v in hps.items()
        if k not in ("num_boost_round", "early_stopping_rounds", "metric", "use_dask")
    }
    params.update(objective=objective, metric=metric if hps["metric"] == "auto" else hps["metric"])
    params["is_unbalance"] = hps["is_unbalance"] == "True"
    if problem.kind == "multiclass":
        params["num_class"] = len(problem.classes)
    if problem.kind != "binary":
        del params["scale_pos_weight"], params["is_unbalance"]
    return params


def _train(context: TrainingContext, hps: dict[str, Any]) -> None:
    import lightgbm as lgb

    x, y = tabular.load_table(context.channels["train"], context.content_types.get("train"))
    problem = tabular.detect_problem(y)
    params = lightgbm_params(hps, problem)
    print(f"Problem type: {problem.kind}; parameters: {params}", flush=True)
    dtrain = lgb.Dataset(x, label=problem.encode(y))
    sets, names = [dtrain], ["train"]
    callbacks = [_log_callback()]
    if "validation" in context.channels:
        x_val, y_val = tabular.load_table(
            context.channels["validation"], context.content_types.get("validation")
        )
        sets.append(lgb.Dataset(x_val, label=problem.encode(y_val), reference=dtrain))
        names.append("validation")
        if hps["early_stopping_rounds"] > 0:
            callbacks.append(lgb.early_stopping(hps["early_stopping_rounds"], verbose=False))
    try:
        booster = lgb.train(
            params,
            dtrain,
            num_boost_round=hps["num_boost_round"],
            valid_sets=sets,
            valid_names=names,
            callbacks=callbacks,
        )
    except lgb.basic.LightGBMError as error:
        raise AlgorithmError(f"LightGBM training failed: {error}") from None
    context.model_dir.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(context.model_dir / MODEL_FILE))
    problem.save(context.model_dir)


def _log_callback() -> Any:
    def log(env: Any) -> None:
        tabular.log_iteration(
            env.iteration + 1,
            ((data, metric, value) for data, metric, value, *_ in env.evaluation_result_list),
        )

    log.order = 10  # type: ignore[attr-defined]  # as log_evaluation: before early stopping
    return log


# ---------------------------------------------------------------- inference


class Model:
    def __init__(self, booster: Any, problem: tabular.Problem) -> None:
        self.booster = booster
        self.problem = problem


def model_fn(model_dir: str | Path) -> Model:
    import lightgbm as lgb

    directory = Path(model_dir)
    booster = lgb.Booster(model_file=str(directory / MODEL_FILE))
    return Model(booster, tabular.Problem.load(directory))


def input_fn(body: bytes | str, content_type: str | None) -> np.ndarray:
    return tabular.decode(body, content_type)


def predict_fn(data: np.ndarray, model: Model) -> tabular.Prediction:
    """Regression values, or class probabilities (the positive class's for binary)."""
    try:
        output = np.asarray(model.booster.predict(data))
    except Exception as error:  # LightGBM's check of the number of features and the like
        raise AlgorithmError(f"Unable to evaluate payload provided: {error}") from None
    return tabular.Prediction(output, model.problem)


def output_fn(prediction: tabular.Prediction, accept: str | None) -> tuple[bytes, str]:
    return tabular.encode(prediction, accept)
