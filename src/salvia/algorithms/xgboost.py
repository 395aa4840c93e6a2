"""SageMaker's built-in XGBoost algorithm: the algorithm mode of aws/sagemaker-xgboost-container.

Training follows `algorithm_mode/train.py`: the hyperparameters are checked as
`hyperparameter_validation.py` checks them (an unknown one fails the job, as the container's
"Extraneous hyperparameter found"), the data is read from the `train` (and optional
`validation`) channel in libsvm (the default), CSV, parquet or RecordIO-protobuf, and
`xgboost.train` runs with the container's callbacks: XGBoost's own evaluation log
(`[3]\\ttrain-rmse:0.1\\tvalidation-rmse:0.2`, which SageMaker's regexes read as `#011`),
early stopping on the last `eval_metric` (or the tuning objective), the container's
scikit-learn metrics (`accuracy`, `f1`, `mse`, `r2`, ...) and `save_model_on_termination`.
The model is saved as `xgboost-model` in SM_MODEL_DIR with `Booster.save_model` (UBJSON),
exactly as the container saves it, so `xgboost.Booster().load_model` reads it.

Inference follows `algorithm_mode/serve.py` and `serve_utils.py`: CSV (no label column),
libsvm and RecordIO-protobuf in (JSON and JSON Lines rows are also accepted); text/csv (one
prediction per line, the default Accept), `{"predictions": [{"score": ...}]}` JSON, JSON Lines
and RecordIO-protobuf out; `SAGEMAKER_INFERENCE_OUTPUT` selects classification keys
(`predicted_label`, `probabilities`, ...).
"""

from __future__ import annotations

import ast
import json
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from salvia.algorithms.base import (
    AlgorithmError,
    AlgorithmSpec,
    Param,
    TrainingContext,
    run_training,
)
from salvia.algorithms.xgboost_data import CONTENT_TYPES, content_kind, load_channel
from salvia.algorithms.xgboost_inference import (
    MODEL_NAME,
    input_fn,
    model_fn,
    output_fn,
    predict_fn,
    transform_fn,
)

__all__ = ["SPEC", "input_fn", "model_fn", "output_fn", "predict_fn", "train", "transform_fn"]

CHECKPOINT_NAME = "xgboost-checkpoint"

# constants/xgb_constants.py
MAXIMIZE_METRICS = (
    "accuracy", "auc", "aucpr", "balanced_accuracy", "f1", "f1_binary", "f1_macro", "map",
    "ndcg", "precision", "r2", "recall", "precision_macro", "precision_micro", "recall_macro",
    "recall_micro",
)  # fmt: skip
MINIMIZE_METRICS = (
    "aft-nloglik", "cox-nloglik", "error", "gamma-deviance", "gamma-nloglik",
    "interval-regression-accuracy", "logloss", "mae", "mape", "merror", "mlogloss", "mphe",
    "mse", "poisson-nloglik", "rmse", "rmsle", "tweedie-nloglik",
)  # fmt: skip
OBJECTIVES = (
    "aft_loss_distribution", "binary:logistic", "binary:logitraw", "binary:hinge",
    "count:poisson", "multi:softmax", "multi:softprob", "rank:pairwise", "rank:ndcg", "rank:map",
    "reg:linear", "reg:squarederror", "reg:logistic", "reg:gamma", "reg:pseudohubererror",
    "reg:squaredlogerror", "reg:absoluteerror", "reg:tweedie", "survival:aft", "survival:cox",
)  # fmt: skip
_TREE_UPDATERS = ("grow_colmaker", "distcol", "grow_histmaker", "grow_skmaker", "sync",
                  "refresh", "prune", "grow_quantile_histmaker")  # fmt: skip
_TREE_BUILDERS = ("grow_colmaker", "distcol", "grow_histmaker", "grow_quantile_histmaker")
_LINEAR_UPDATERS = ("shotgun", "coord_descent")
_TRUE_FALSE = ("true", "false")


def _p(name: str, kind: type, **kwargs: Any) -> Param:
    return Param(name, kind, default=kwargs.pop("default", None), **kwargs)


# algorithm_mode/hyperparameter_validation.py: only num_round is required, nothing has a
# default (XGBoost's own defaults apply); open interval ends are checked in `_check_open`.
PARAMS = (
    Param("num_round", int, low=1),
    _p("csv_weights", int, low=0, high=1),
    _p("early_stopping_rounds", int, low=1),
    _p("booster", str, choices=("gbtree", "gblinear", "dart")),
    _p("verbosity", int, low=0, high=3),
    _p("nthread", int, low=1),
    _p("eta", float, low=0, high=1, aliases=("learning_rate",)),
    _p("gamma", float, low=0, aliases=("min_split_loss",)),
    _p("max_depth", int, low=0),
    _p("min_child_weight", float, low=0),
    _p("max_delta_step", float, low=0),
    _p("subsample", float, low=0, high=1),
    _p("colsample_bytree", float, low=0, high=1),
    _p("colsample_bylevel", float, low=0, high=1),
    _p("colsample_bynode", float, low=0, high=1),
    _p("lambda", float, low=0, aliases=("reg_lambda",)),
    _p("alpha", float, low=0, aliases=("reg_alpha",)),
    _p("tree_method", str, choices=("auto", "exact", "approx", "hist", "gpu_hist")),
    _p("sketch_eps", float, low=0, high=1),
    _p("scale_pos_weight", float, low=0),
    _p("updater", str),
    _p("dsplit", str, choices=("row", "col")),
    _p("refresh_leaf", int, low=0, high=1),
    _p("process_type", str, choices=("default", "update")),
    _p("grow_policy", str, choices=("depthwise", "lossguide")),
    _p("max_leaves", int, low=0),
    _p("max_bin", int, low=0),
    _p("predictor", str, choices=("auto", "cpu_predictor", "gpu_predictor")),
    _p("monotone_constraints", str),
    _p("interaction_constraints", str),
    _p("sample_type", str, choices=("uniform", "weighted")),
    _p("normalize_type", str, choices=("tree", "forest")),
    _p("rate_drop", float, low=0, high=1),
    _p("one_drop", int, low=0, high=1),
    _p("skip_drop", float, low=0, high=1),
    _p("lambda_bias", float, low=0, high=1),
    _p("tweedie_variance_power", float, low=1, high=2),
    _p("objective", str, choices=OBJECTIVES),
    _p("num_class", int, low=2),
    _p("base_score", float, low=0),
    _p("_kfold", int, low=2),
    _p("_num_cv_round", int, low=1),
    _p("eval_metric", str),
    _p("seed", int, low=-(2**31), high=2**31 - 1),
    _p("num_parallel_tree", int, low=1),
    _p("save_model_on_termination", str, choices=_TRUE_FALSE),
    _p("aft_loss_distribution", str, choices=("normal", "logistic", "extreme")),
    _p("aft_loss_distribution_scale", float, low=0),
    _p("deterministic_histogram", str, choices=_TRUE_FALSE),
    _p("sampling_method", str, choices=("uniform", "gradient_based")),
    _p("prob_buffer_row", int, low=1),
    _p("use_dask_gpu_training", str, choices=_TRUE_FALSE),
)
_OPEN_LOW = {"subsample", "colsample_bytree", "colsample_bylevel", "colsample_bynode",
             "sketch_eps", "scale_pos_weight", "tweedie_variance_power", "prob_buffer_row",
             "seed"}  # fmt: skip
_OPEN_HIGH = {"sketch_eps", "tweedie_variance_power", "seed"}


def _metric(channel: str, name: str) -> tuple[str, str]:
    # algorithm_mode/metrics.py, for the train channel too (XGBoost logs both)
    return f"{channel}:{name}", rf".*\[[0-9]+\].*#011{channel}-{re.escape(name)}:(\S+)"


SPEC = AlgorithmSpec(
    name="xgboost",
    repositories=("sagemaker-xgboost", "xgboost"),
    params=PARAMS,
    train="salvia.algorithms.xgboost:train",
    channels=("train", "validation"),
    content_types=CONTENT_TYPES,
    metrics=tuple(
        _metric(channel, name)
        for channel in ("validation", "train")
        for name in (*MAXIMIZE_METRICS, *MINIMIZE_METRICS)
    ),
    module="xgboost",
    extra="xgboost",
    inference="salvia.algorithms.xgboost_inference",
)


def train() -> None:
    run_training(SPEC, _train)


# ---------------------------------------------------------------- hyperparameters


def _check(hps: dict[str, Any]) -> None:
    """The container's range and dependency validators beyond plain bounds and choices."""
    for name in _OPEN_LOW | _OPEN_HIGH:
        value = hps.get(name)
        bound = next(p for p in PARAMS if p.name == name)
        if value is not None and (
            (name in _OPEN_LOW and value == bound.low)
            or (name in _OPEN_HIGH and value == bound.high)
        ):
            raise AlgorithmError(f"Hyperparameter {name}: {value} is outside its open range.")
    objective = hps.get("objective")
    if objective in ("multi:softmax", "multi:softprob") and hps.get("num_class") is None:
        raise AlgorithmError("Require input for parameter 'num_class' for multi-classification")
    if hps.get("updater") is not None:
        hps["updater"] = _check_updater(hps["updater"].split(","), hps)
    if hps.get("monotone_constraints") is not None:
        value = _literal("monotone_constraints", hps["monotone_constraints"])
        if not isinstance(value, tuple | list) or any(v not in (-1, 0, 1) for v in value):
            raise AlgorithmError(
                f"Hyperparameter monotone_constraints: value {value} not in range [-1, 0, 1]"
            )
        if hps.get("tree_method") not in ("exact", "hist"):
            raise AlgorithmError(
                "monotone_constraints can be used only when the tree_method parameter is set to "
                "either 'exact' or 'hist'."
            )
        hps["monotone_constraints"] = tuple(value)
    if hps.get("interaction_constraints") is not None:
        value = _literal("interaction_constraints", hps["interaction_constraints"])
        if not isinstance(value, list) or any(
            not isinstance(group, list) or any(not isinstance(i, int) or i < 1 for i in group)
            for group in value
        ):
            raise AlgorithmError(
                f"Hyperparameter interaction_constraints: value {value} not in range [1, inf)"
            )
        if hps.get("tree_method") not in ("exact", "hist", "approx"):
            raise AlgorithmError(
                "interaction_constraints can be used only when the tree_method parameter is set "
                "to either 'exact', 'hist' or 'approx'."
            )
        hps["interaction_constraints"] = value
    if hps.get("eval_metric") is not None:
        hps["eval_metric"] = _check_eval_metric(hps["eval_metric"].split(","), objective)


def _literal(name: str, text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise AlgorithmError(f"Hyperparameter {name}: could not parse value") from None


def _check_updater(value: list[str], hps: dict[str, Any]) -> str:
    if hps.get("booster") == "gblinear":
        if not (len(value) == 1 and value[0] in _LINEAR_UPDATERS):
            raise AlgorithmError("Linear updater should be one of these options: "
                                 "'shotgun', 'coord_descent'.")  # fmt: skip
    elif hps.get("process_type") == "update":
        if not all(v in ("refresh", "prune") for v in value):
            raise AlgorithmError(
                "process_type 'update' can only be used with updater 'refresh' and 'prune'"
            )
    else:
        if not all(v in _TREE_UPDATERS for v in value):
            raise AlgorithmError(
                "Tree updater should be selected from these options: "
                + ", ".join(f"'{u}'" for u in _TREE_UPDATERS)
                + "."
            )
        if sum(v in _TREE_BUILDERS for v in value) > 1:
            raise AlgorithmError("Only one tree grow plugin can be selected.")
    return ",".join(value)


def _check_eval_metric(metrics: list[str], objective: str | None) -> list[str]:
    for metric in metrics:
        if "@" in metric:
            name, threshold = (part.strip() for part in metric.split("@", 1))
            if name not in ("error", "ndcg", "map"):
                raise AlgorithmError(
                    f"Metric '{metric}' is not supported. Parameter 'eval_metric' with customized "
                    "threshold should be one of these options: 'error', 'ndcg', 'map'."
                )
            try:
                float(threshold)
            except ValueError:
                raise AlgorithmError(
                    f"Threshold value 't' in '{name}@t' expects float input."
                ) from None
        elif metric not in MAXIMIZE_METRICS + MINIMIZE_METRICS:
            raise AlgorithmError(
                f"Hyperparameter eval_metric: value {metrics} not in range "
                f"{list(MAXIMIZE_METRICS + MINIMIZE_METRICS)}"
            )
    if "auc" in metrics and not (objective or "").startswith(("binary:", "rank:")):
        raise AlgorithmError(
            "Metric 'auc' can only be applied for classification and ranking problems."
        )
    if "aft-nloglik" in metrics and objective != "survival:aft":
        raise AlgorithmError("Metric 'aft-nloglik' can only be applied for 'survival:aft' "
                             "objective.")  # fmt: skip
    return metrics


# ---------------------------------------------------------------- training

# Read by the container's early stopping and the tuner; not parameters of xgboost.train.
_CONTAINER_ONLY = ("num_round", "csv_weights", "early_stopping_rounds", "save_model_on_termination",
                   "_kfold", "_num_cv_round", "use_dask_gpu_training")  # fmt: skip


def _train(context: TrainingContext, hps: dict[str, Any]) -> None:
    import xgboost as xgb

    # `xgboost-model` has no extension, so the library says on each save which format it chose;
    # the format is the documented one (UBJSON), and the line only clutters the job's log.
    warnings.filterwarnings("ignore", message=".*Saving model in the UBJSON format as default")
    _check(hps)
    if len(context.hosts) > 1:
        raise AlgorithmError(
            f"Distributed XGBoost training over {len(context.hosts)} hosts is not supported "
            "by this algorithm image yet; use one instance."
        )
    if hps.get("use_dask_gpu_training") == "true":
        raise AlgorithmError("use_dask_gpu_training needs GPU instances and Dask, "
                             "which this image does not provide.")  # fmt: skip
    kind = content_kind(context.content_types.get("train"))
    csv_weights = hps.get("csv_weights") or 0
    dtrain = load_channel(context.channels["train"], kind, csv_weights)
    if dtrain is None:
        raise AlgorithmError(f"No data in training channel path {context.channels['train']}")
    dval = None
    if "validation" in context.channels:
        dval = load_channel(context.channels["validation"], kind, csv_weights)
        if dval is None:
            raise AlgorithmError(
                f"No data in validation channel path {context.channels['validation']}"
            )
    print(f"Train matrix has {dtrain.num_row()} rows and {dtrain.num_col()} columns", flush=True)
    if dval is not None:
        print(f"Validation matrix has {dval.num_row()} rows", flush=True)

    num_round = hps["num_round"]
    early_stopping_rounds = hps.get("early_stopping_rounds")
    save_on_termination = hps.get("save_model_on_termination") == "true"
    kfold, num_cv_round = hps.get("_kfold"), hps.get("_num_cv_round") or 1
    params = {k: v for k, v in hps.items() if v is not None and k not in _CONTAINER_ONLY}

    # train_utils.get_eval_metrics_and_feval
    eval_metric = params.pop("eval_metric", None)
    tuning = context.raw_hyperparameters.get("_tuning_objective_metric")
    tuning_metrics = tuning.split(":")[1].split(",") if tuning and ":" in tuning else None
    union = eval_metric or tuning_metrics
    if eval_metric and tuning_metrics:
        union = sorted(set(eval_metric) | set(tuning_metrics))
    custom_metric = None
    if union:
        custom = [m for m in union if m in _CUSTOM_METRICS]
        objective = params.get("objective") or "reg:squarederror"
        custom_metric = _configure_feval(custom, objective) if custom else None
        cleaned = [m for m in union if m not in custom]
        if cleaned:
            params["eval_metric"] = cleaned
    stopping_metric = None
    if early_stopping_rounds:
        if tuning_metrics:
            stopping_metric = tuning_metrics[-1]
        elif eval_metric:
            stopping_metric = eval_metric[-1]

    def callbacks(model_name: str) -> list[Any]:
        found: list[Any] = [xgb.callback.EvaluationMonitor()]
        if checkpoint_dir is not None:
            found.append(_checkpoints(checkpoint_dir, start))
        if save_on_termination:
            found.append(_save_intermediate(context.model_dir / model_name))
        if dval is not None and stopping_metric and early_stopping_rounds:
            found.append(
                xgb.callback.EarlyStopping(
                    rounds=early_stopping_rounds,
                    metric_name=stopping_metric,
                    data_name="validation",
                    maximize=stopping_metric in MAXIMIZE_METRICS,
                    save_best=True,
                )
            )
        return found

    evals = [(dtrain, "train")] + ([(dval, "validation")] if dval is not None else [])
    context.model_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = _checkpoint_dir(context) if kfold is None else None
    resume, start = _load_checkpoint(checkpoint_dir)
    try:
        if kfold is None:
            booster = xgb.train(params, dtrain, num_boost_round=num_round - start, evals=evals,
                                custom_metric=custom_metric, callbacks=callbacks(MODEL_NAME),
                                xgb_model=resume, verbose_eval=False)  # fmt: skip
            booster.save_model(str(context.model_dir / MODEL_NAME))
            return
        boosters = _cross_validate(
            params, dtrain, dval, num_round, kfold, num_cv_round, evals, custom_metric, callbacks
        )
    except xgb.core.XGBoostError as error:
        raise AlgorithmError(f"XGB train call failed with exception:\n {error}") from None
    for fold, fold_booster in enumerate(boosters):
        fold_booster.save_model(str(context.model_dir / f"{MODEL_NAME}-{fold}"))


def _cross_validate(params: dict[str, Any], dtrain: Any, dval: Any, num_round: int, kfold: int,
                    repeats: int, evals: list[Any], custom_metric: Any,
                    callbacks: Any) -> list[Any]:  # fmt: skip
    """The container's `_kfold` mode (used by Autopilot): one model per fold over the train and
    validation data together; the fold models form an ensemble at inference."""
    import xgboost as xgb
    from sklearn.model_selection import RepeatedKFold, RepeatedStratifiedKFold

    if dval is not None:
        from scipy import sparse

        features = sparse.vstack([_features(dtrain), _features(dval)]).tocsr()
        labels = np.concatenate([dtrain.get_label(), dval.get_label()])
        combined = xgb.DMatrix(features, label=labels)
    else:
        combined = dtrain
    objective = params.get("objective") or ""
    classification = bool(params.get("num_class")) or objective.startswith("binary:")
    y = combined.get_label() if classification else None
    splitter: Any = (RepeatedStratifiedKFold(n_splits=kfold, n_repeats=repeats) if classification
                     else RepeatedKFold(n_splits=kfold, n_repeats=repeats))  # fmt: skip
    boosters: list[Any] = []
    for train_idx, _ in splitter.split(X=np.zeros(combined.num_row()), y=y):
        print(f"Train cross validation fold {(len(boosters) % kfold) + 1}", flush=True)
        boosters.append(
            xgb.train(
                params,
                combined.slice(train_idx),
                num_boost_round=num_round,
                evals=evals,
                custom_metric=custom_metric,
                callbacks=callbacks(f"{MODEL_NAME}-{len(boosters)}"),
                verbose_eval=False,
            )
        )
    return boosters


def _features(dmatrix: Any) -> Any:
    return dmatrix.get_data()


def _checkpoint_dir(context: TrainingContext) -> Path | None:
    """The checkpoint directory when the job has a CheckpointConfig (checkpointing.py)."""
    config_dir = Path(os.environ.get("SM_INPUT_CONFIG_DIR", "/opt/ml/input/config"))
    path = Path(os.environ.get("SM_CHECKPOINT_CONFIG_FILE", config_dir / "checkpointconfig.json"))
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return Path(config.get("LocalPath") or "/opt/ml/checkpoints")


def _load_checkpoint(directory: Path | None) -> tuple[str | None, int]:
    if directory is None or not directory.is_dir():
        return None, 0
    pattern = re.compile(rf"^{CHECKPOINT_NAME}\.([0-9]+)$")
    found = sorted((int(m.group(1)), p) for p in directory.iterdir()
                   if (m := pattern.match(p.name)))  # fmt: skip
    if not found:
        return None, 0
    iteration, path = found[-1]
    print(f"Checkpoint loaded from {path}; resuming from iteration {iteration + 1}", flush=True)
    return str(path), iteration + 1


def _after_each_round(action: Callable[[Any, int], None]) -> Any:
    """An `xgboost.callback.TrainingCallback` running `action(model, epoch)` after each round."""
    import xgboost as xgb

    class AfterEachRound(xgb.callback.TrainingCallback):
        def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
            action(model, epoch)
            return False

    return AfterEachRound()


def _checkpoints(directory: Path, start: int) -> Any:
    """checkpointing.py: `xgboost-checkpoint.<iteration>` after each round, the last five kept."""

    def save(model: Any, epoch: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        model.save_model(str(directory / f"{CHECKPOINT_NAME}.{start + epoch}"))
        (directory / f"{CHECKPOINT_NAME}.{start + epoch - 5}").unlink(missing_ok=True)

    return _after_each_round(save)


def _save_intermediate(path: Path) -> Any:
    """save_model_on_termination: the model so far is in SM_MODEL_DIR after every round."""
    return _after_each_round(lambda model, _: model.save_model(str(path)))


# metrics/custom_metrics.py: the container's scikit-learn metrics. XGBoost >= 1.6 hands a
# `custom_metric` the transformed prediction (probabilities, softmax class ids), not the margins
# the container's `margin_to_class_label` expects, so the class is read per objective here.


def _class_labels(preds: np.ndarray, objective: str) -> np.ndarray:
    if preds.ndim > 1:
        return np.argmax(preds, axis=-1)
    if objective == "multi:softmax":
        return preds.astype(int)
    return (preds > (0.0 if objective == "binary:logitraw" else 0.5)).astype(int)


def _sk(name: str, classes: bool = True, **kwargs: Any) -> tuple[str, bool, dict[str, Any]]:
    return name, classes, kwargs


_CUSTOM_METRICS = {
    "accuracy": _sk("accuracy_score"),
    "balanced_accuracy": _sk("balanced_accuracy_score"),
    "f1": _sk("f1_score", average="macro"),
    "f1_binary": _sk("f1_score", average="binary"),
    "f1_macro": _sk("f1_score", average="macro"),
    "mse": _sk("mean_squared_error", classes=False),
    "rmse": _sk("root_mean_squared_error", classes=False),
    "mae": _sk("mean_absolute_error", classes=False),
    "precision": _sk("precision_score"),
    "precision_macro": _sk("precision_score", average="macro"),
    "precision_micro": _sk("precision_score", average="micro"),
    "r2": _sk("r2_score", classes=False),
    "recall": _sk("recall_score"),
    "recall_macro": _sk("recall_score", average="macro"),
    "recall_micro": _sk("recall_score", average="micro"),
}


def _configure_feval(names: list[str], objective: str) -> Any:
    from sklearn import metrics

    def custom_feval(preds: np.ndarray, dtrain: Any) -> list[tuple[str, float]]:
        labels, results = dtrain.get_label(), []
        for name in names:
            function, classes, kwargs = _CUSTOM_METRICS[name]
            if classes and not preds.size:
                results.append((name, 0.0))
                continue
            predicted = _class_labels(preds, objective) if classes else preds
            results.append((name, float(getattr(metrics, function)(labels, predicted, **kwargs))))
        return results

    return custom_feval
