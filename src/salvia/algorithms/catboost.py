"""CatBoost as SageMaker's built-in (JumpStart) CatBoost algorithm: its hyperparameter names,
defaults and ranges (DG catboost-hyperparameters), `train` and optional `validation` channels
in CSV (no header, label first) or parquet, and the problem type detected from the labels
(`salvia.algorithms.tabular`): regression (`RMSE` loss and metric), binary (`Logloss` loss,
`AUC` metric) or multiclass (`MultiClass`).

Each iteration logs `[i]\\ttrain-<metric>:<v>\\tvalidation-<metric>:<v>` for the loss and the
evaluation metric CatBoost computes on each set, read by the `train:<metric>` and
`validation:<metric>` definitions. With a validation channel, training stops early and keeps
the best iteration (CatBoost's `use_best_model`). The model is CatBoost's binary format,
`model.cbm` in SM_MODEL_DIR, next to `problem.json`; SageMaker's own artifact layout is not
reproduced.
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

MODEL_FILE = "model.cbm"
# the metrics most used with the three problem types (any CatBoost metric is accepted)
METRICS = (
    "RMSE",
    "MAE",
    "MAPE",
    "R2",
    "Quantile",
    "Poisson",
    "Tweedie",
    "Logloss",
    "CrossEntropy",
    "AUC",
    "Accuracy",
    "BalancedAccuracy",
    "Precision",
    "Recall",
    "F1",
    "TotalF1",
    "MCC",
    "PRAUC",
    "BrierScore",
    "MultiClass",
    "MultiClassOneVsAll",
)

PARAMS = (
    Param("iterations", int, default=500, low=1),
    Param("early_stopping_rounds", int, default=5),
    Param("eval_metric", str, default="auto"),
    Param("learning_rate", float, default=0.009, low=0),
    Param("depth", int, default=6, low=1, high=16),
    Param("l2_leaf_reg", float, default=3, low=0),
    Param("random_strength", float, default=1.0, low=0),
    Param("max_leaves", int, default=31, low=2, high=64),
    Param("rsm", float, default=1.0, low=0, high=1),
    Param("sampling_frequency", str, default="PerTreeLevel", choices=("PerTreeLevel", "PerTree")),
    Param("min_data_in_leaf", int, default=1, low=1),
    Param("bagging_temperature", float, default=1.0, low=0),
    Param("boosting_type", str, default="Plain", choices=("Ordered", "Plain")),
    Param("scale_pos_weight", float, default=1.0, low=0),
    Param("max_bin", str, default="auto"),
    Param(
        "grow_policy",
        str,
        default="SymmetricTree",
        choices=("SymmetricTree", "Depthwise", "Lossguide"),
    ),
    Param("random_seed", int, default=0, low=0),
    Param("thread_count", int, default=-1),
    Param("verbose", int, default=1),
)

SPEC = AlgorithmSpec(
    name="catboost",
    repositories=(),
    params=PARAMS,
    train="salvia.algorithms.catboost:train",
    channels=("train", "validation"),
    content_types=tabular.CONTENT_TYPES,
    metrics=tabular.metric_definitions(METRICS),
    module="catboost",
    extra="catboost",
    inference="salvia.algorithms.catboost",
)


def train() -> None:
    run_training(SPEC, _train)


def catboost_params(hps: dict[str, Any], problem: tabular.Problem) -> dict[str, Any]:
    """The parameters of `catboost.CatBoost` for the hyperparameters and the problem."""
    for name in ("learning_rate", "rsm"):
        if hps[name] == 0:
            raise AlgorithmError(f"Hyperparameter {name}: 0 is outside its open range.")
    loss, metric = {
        "regression": ("RMSE", "RMSE"),
        "binary": ("Logloss", "AUC"),
        "multiclass": ("MultiClass", "MultiClass"),
    }[problem.kind]
    params: dict[str, Any] = {
        "loss_function": loss,
        "eval_metric": metric if hps["eval_metric"] == "auto" else hps["eval_metric"],
        "iterations": hps["iterations"],
        "learning_rate": hps["learning_rate"],
        "depth": hps["depth"],
        "l2_leaf_reg": hps["l2_leaf_reg"],
        "random_strength": hps["random_strength"],
        "rsm": hps["rsm"],
        "boosting_type": hps["boosting_type"],
        "grow_policy": hps["grow_policy"],
        "random_seed": hps["random_seed"],
        "thread_count": hps["thread_count"],
        "verbose": hps["verbose"],
        "allow_writing_files": False,
    }
    # options CatBoost takes only in some configurations: passed when they apply
    if hps["grow_policy"] == "Lossguide":
        params["max_leaves"] = hps["max_leaves"]
    if hps["grow_policy"] == "SymmetricTree":  # the others sample per tree only
        params["sampling_frequency"] = hps["sampling_frequency"]
    else:
        params["min_data_in_leaf"] = hps["min_data_in_leaf"]
    if hps["bagging_temperature"] != 1.0:
        params.update(bootstrap_type="Bayesian", bagging_temperature=hps["bagging_temperature"])
    if problem.kind == "binary" and hps["scale_pos_weight"] != 1.0:
        params["scale_pos_weight"] = hps["scale_pos_weight"]
    if hps["max_bin"] != "auto":
        try:
            params["border_count"] = int(hps["max_bin"])
        except ValueError:
            raise AlgorithmError(
                f"Hyperparameter max_bin: '{hps['max_bin']}' is not 'auto' or an integer."
            ) from None
    return params


def _train(context: TrainingContext, hps: dict[str, Any]) -> None:
    import catboost as cb

    x, y = tabular.load_table(context.channels["train"], context.content_types.get("train"))
    problem = tabular.detect_problem(y)
    params = catboost_params(hps, problem)
    print(f"Problem type: {problem.kind}; parameters: {params}", flush=True)
    model = cb.CatBoost(params)
    fit: dict[str, Any] = {"callbacks": [_LogIterations()]}
    if "validation" in context.channels:
        x_val, y_val = tabular.load_table(
            context.channels["validation"], context.content_types.get("validation")
        )
        fit["eval_set"] = cb.Pool(x_val, label=problem.encode(y_val))
        if hps["early_stopping_rounds"] > 0:
            fit["early_stopping_rounds"] = hps["early_stopping_rounds"]
    try:
        model.fit(cb.Pool(x, label=problem.encode(y)), **fit)
    except cb.CatBoostError as error:
        raise AlgorithmError(f"CatBoost training failed: {error}") from None
    context.model_dir.mkdir(parents=True, exist_ok=True)
    model.save_model(str(context.model_dir / MODEL_FILE))
    problem.save(context.model_dir)


class _LogIterations:
    """A CatBoost callback printing the metric line of each iteration."""

    def after_iteration(self, info: Any) -> bool:
        channels = {"learn": "train", "validation": "validation"}
        tabular.log_iteration(
            info.iteration,
            (
                (channels[data], metric, values[-1])
                for data, metrics in info.metrics.items()
                if data in channels
                for metric, values in metrics.items()
            ),
        )
        return True


# ---------------------------------------------------------------- inference


class Model:
    def __init__(self, model: Any, problem: tabular.Problem) -> None:
        self.model = model
        self.problem = problem


def model_fn(model_dir: str | Path) -> Model:
    import catboost as cb

    directory = Path(model_dir)
    model = cb.CatBoost()
    model.load_model(str(directory / MODEL_FILE))
    return Model(model, tabular.Problem.load(directory))


def input_fn(body: bytes | str, content_type: str | None) -> np.ndarray:
    return tabular.decode(body, content_type)


def predict_fn(data: np.ndarray, model: Model) -> tabular.Prediction:
    """Regression values, or the probabilities of the classes."""
    kind = "Probability" if model.problem.classification else "RawFormulaVal"
    try:
        output = np.asarray(model.model.predict(data, prediction_type=kind))
    except Exception as error:  # CatBoost's check of the number of features and the like
        raise AlgorithmError(f"Unable to evaluate payload provided: {error}") from None
    return tabular.Prediction(output, model.problem)


def output_fn(prediction: tabular.Prediction, accept: str | None) -> tuple[bytes, str]:
    return tabular.encode(prediction, accept)
