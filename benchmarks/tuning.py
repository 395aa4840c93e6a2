"""Hyperparameter tuning: Salvia's Bayesian strategy against Optuna's TPE run directly and
random search, on the same objective, and the wall time of one tuning job with one and two
parallel training jobs.

    .venv/bin/python benchmarks/tuning.py [--trials 30] [--seeds 5] [--parallel-trials 30]

The objective: scikit-learn's HistGradientBoostingClassifier on the bundled breast cancer data,
3-fold stratified cross-validated log loss (lower is better), four hyperparameters
(learning_rate, max_leaf_nodes, min_samples_leaf, l2_regularization, all on log scales). Salvia
runs each trial as a real training job (script mode on the scikit-learn image); Optuna direct
and random search call the same function in this process. For each method and seed the best
score after 10, 20 and 30 trials is recorded; the medians over seeds are printed.

Targets (issue 7): Salvia's Bayesian >= Optuna direct at 30 trials (a lower or equal median
log loss) and better than random at 10; a speed-up >= 1.6x with MaxParallelTrainingJobs 2 on
two cores.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _salvia import Salvia, running_salvia

SKLEARN = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
ROLE = "arn:aws:iam::123456789012:role/bench"
BUCKET = "tuning-bench"

# The objective, shared verbatim by the training script and the in-process baselines.
OBJECTIVE = """
import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import StratifiedKFold, cross_val_score

def cv_log_loss(x, y, learning_rate, max_leaf_nodes, min_samples_leaf, l2_regularization):
    model = HistGradientBoostingClassifier(
        learning_rate=learning_rate, max_leaf_nodes=max_leaf_nodes,
        min_samples_leaf=min_samples_leaf, l2_regularization=l2_regularization,
        max_iter=100, random_state=0)
    folds = StratifiedKFold(3, shuffle=True, random_state=0)
    return -float(np.mean(cross_val_score(model, x, y, cv=folds, scoring="neg_log_loss")))
"""

SCRIPT = (
    OBJECTIVE
    + """
import argparse, os
parser = argparse.ArgumentParser()
for name in ("learning_rate", "l2_regularization"):
    parser.add_argument("--" + name, type=float)
for name in ("max_leaf_nodes", "min_samples_leaf"):
    parser.add_argument("--" + name, type=int)
args, _ = parser.parse_known_args()
data = np.loadtxt(os.path.join(os.environ["SM_CHANNEL_TRAIN"], "data.csv"), delimiter=",")
print(f"cv_log_loss={cv_log_loss(data[:, 1:], data[:, 0], **vars(args)):.6f}")
"""
)

RANGES: dict[str, Any] = {
    "ContinuousParameterRanges": [
        {"Name": "learning_rate", "MinValue": "0.005", "MaxValue": "1",
         "ScalingType": "Logarithmic"},
        {"Name": "l2_regularization", "MinValue": "0.0001", "MaxValue": "10",
         "ScalingType": "Logarithmic"},
    ],
    "IntegerParameterRanges": [
        {"Name": "max_leaf_nodes", "MinValue": "2", "MaxValue": "64",
         "ScalingType": "Logarithmic"},
        {"Name": "min_samples_leaf", "MinValue": "1", "MaxValue": "100",
         "ScalingType": "Logarithmic"},
    ],
}  # fmt: skip
CHECKPOINTS: tuple[int, ...] = (10, 20, 30)


def dataset() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    return x, y


def running_best(scores: list[float]) -> list[float]:
    return list(np.minimum.accumulate(scores))


# --- baselines in this process ----------------------------------------------------------------


def optuna_direct(seed: int, trials: int, sampler_name: str) -> list[float]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    namespace: dict[str, Any] = {}
    exec(OBJECTIVE, namespace)
    x, y = dataset()

    def objective(trial: optuna.Trial) -> float:
        score: float = namespace["cv_log_loss"](
            x,
            y,
            learning_rate=trial.suggest_float("learning_rate", 0.005, 1, log=True),
            max_leaf_nodes=trial.suggest_int("max_leaf_nodes", 2, 64, log=True),
            min_samples_leaf=trial.suggest_int("min_samples_leaf", 1, 100, log=True),
            l2_regularization=trial.suggest_float("l2_regularization", 1e-4, 10, log=True),
        )
        return score

    sampler: optuna.samplers.BaseSampler = (
        optuna.samplers.TPESampler(seed=seed)
        if sampler_name == "tpe"
        else optuna.samplers.RandomSampler(seed=seed)
    )
    study = optuna.create_study(direction="minimize", sampler=sampler)
    study.optimize(objective, n_trials=trials)
    return [t.value for t in study.trials if t.value is not None]


# --- Salvia -----------------------------------------------------------------------------------


def prepare(salvia: Salvia) -> None:
    s3 = salvia.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    x, y = dataset()
    buffer = io.StringIO()
    np.savetxt(buffer, np.column_stack([y, x]), delimiter=",", fmt="%.10g")
    s3.put_object(Bucket=BUCKET, Key="data/data.csv", Body=buffer.getvalue().encode())
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        info = tarfile.TarInfo("tune.py")
        info.size = len(SCRIPT.encode())
        tar.addfile(info, io.BytesIO(SCRIPT.encode()))
    s3.put_object(Bucket=BUCKET, Key="code/tune.tar.gz", Body=archive.getvalue())


def salvia_tuning(
    salvia: Salvia, name: str, seed: int, trials: int, parallel: int
) -> tuple[list[float], float]:
    """One Salvia tuning job: its trials' scores in the order they were started, wall time."""
    sm = salvia.client("sagemaker")
    started = time.perf_counter()
    sm.create_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=name,
        HyperParameterTuningJobConfig={
            "Strategy": "Bayesian",
            "ResourceLimits": {
                "MaxNumberOfTrainingJobs": trials,
                "MaxParallelTrainingJobs": parallel,
            },
            "HyperParameterTuningJobObjective": {"Type": "Minimize", "MetricName": "cv_log_loss"},
            "ParameterRanges": RANGES,
            "RandomSeed": seed,
        },
        TrainingJobDefinition={
            "AlgorithmSpecification": {
                "TrainingImage": SKLEARN,
                "TrainingInputMode": "File",
                "MetricDefinitions": [{"Name": "cv_log_loss", "Regex": r"cv_log_loss=([0-9.]+)"}],
            },
            "StaticHyperParameters": {
                "sagemaker_program": '"tune.py"',
                "sagemaker_submit_directory": f'"s3://{BUCKET}/code/tune.tar.gz"',
            },
            "RoleArn": ROLE,
            "InputDataConfig": [
                {
                    "ChannelName": "train",
                    "DataSource": {
                        "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/data/"}
                    },
                }
            ],
            "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/output"},
            "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1,
                               "VolumeSizeInGB": 1},
            "StoppingCondition": {"MaxRuntimeInSeconds": 600},
            # one trial, one core: the parallel comparison measures trials side by side
            "Environment": {"OMP_NUM_THREADS": "1"},
        },
    )  # fmt: skip
    while True:
        described = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
        if described["HyperParameterTuningJobStatus"] in {"Completed", "Failed", "Stopped"}:
            break
        time.sleep(0.2)
    wall = time.perf_counter() - started
    if described["HyperParameterTuningJobStatus"] != "Completed":
        raise RuntimeError(f"{name}: {described.get('FailureReason')}")
    summaries: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {}
    while True:
        page = sm.list_training_jobs_for_hyper_parameter_tuning_job(
            HyperParameterTuningJobName=name, MaxResults=100, SortBy="CreationTime",
            SortOrder="Ascending", **kwargs
        )  # fmt: skip
        summaries.extend(page["TrainingJobSummaries"])
        if "NextToken" not in page:
            break
        kwargs = {"NextToken": page["NextToken"]}
    summaries.sort(key=lambda s: s["TrainingJobName"])  # <name>-<number>-<suffix>
    scores = [
        s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"]
        if "FinalHyperParameterTuningJobObjectiveMetric" in s
        else float("inf")
        for s in summaries
    ]
    return scores, wall


def medians(runs: list[list[float]]) -> list[float]:
    return [statistics.median(running_best(r)[n - 1] for r in runs) for n in CHECKPOINTS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument(
        "--seeds", type=int, default=5, help="0: only the MaxParallelTrainingJobs timing"
    )
    parser.add_argument("--parallel-trials", type=int, default=30)
    args = parser.parse_args()
    global CHECKPOINTS
    CHECKPOINTS = tuple(n for n in (10, 20, 30) if n <= args.trials)
    seeds = list(range(args.seeds))
    results: dict[str, list[list[float]]] = {"salvia": [], "optuna": [], "random": []}
    with running_salvia() as salvia:
        prepare(salvia)
        for seed in seeds:
            scores, wall = salvia_tuning(salvia, f"bench-s{seed}", seed, args.trials, 1)
            results["salvia"].append(scores)
            print(
                f"seed {seed}: Salvia Bayesian best {min(scores):.4f} in {wall:.0f} s", flush=True
            )
        walls = {}
        for parallel in (1, 2):
            _, walls[parallel] = salvia_tuning(
                salvia, f"bench-p{parallel}", 100, args.parallel_trials, parallel
            )
            print(f"MaxParallelTrainingJobs {parallel}: {walls[parallel]:.1f} s", flush=True)
    for seed in seeds:
        results["optuna"].append(optuna_direct(seed, args.trials, "tpe"))
        results["random"].append(optuna_direct(seed, args.trials, "random"))
    if seeds:
        print_scores(results)
    speedup = walls[1] / walls[2]
    print(
        f"wall time, {args.parallel_trials} trials: parallel 1 {walls[1]:.1f} s, parallel 2 "
        f"{walls[2]:.1f} s, speed-up {speedup:.2f}x ({'met' if speedup >= 1.6 else 'NOT met'})"
    )


def print_scores(results: dict[str, list[list[float]]]) -> None:
    seeds = len(results["salvia"])
    print()
    print(f"median best 3-fold CV log loss over {seeds} seeds (lower is better)")
    header = "| method | " + " | ".join(f"after {n}" for n in CHECKPOINTS) + " |"
    print(header)
    print("|---" * (len(CHECKPOINTS) + 1) + "|")
    table = {name: medians(runs) for name, runs in results.items()}
    labels = {
        "salvia": "Salvia Bayesian (tuning job)",
        "optuna": "Optuna TPE, direct",
        "random": "random search",
    }
    for name, values in table.items():
        print(f"| {labels[name]} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
    last = len(CHECKPOINTS) - 1
    print()
    print(
        f"Salvia vs Optuna at {CHECKPOINTS[last]}: {table['salvia'][last]:.4f} vs "
        f"{table['optuna'][last]:.4f} "
        f"({'met' if table['salvia'][last] <= table['optuna'][last] else 'NOT met'})"
    )
    print(
        f"Salvia vs random at {CHECKPOINTS[0]}: {table['salvia'][0]:.4f} vs "
        f"{table['random'][0]:.4f} "
        f"({'met' if table['salvia'][0] < table['random'][0] else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
