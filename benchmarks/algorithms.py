"""Built-in algorithms: training time through Salvia versus the reference library called
directly on the same data, in the same run.

    .venv/bin/python benchmarks/algorithms.py [--rows 100000] [--only kmeans,rcf] [--repeat 3]

Salvia's figure is a whole training job, from just before CreateTrainingJob to the
`TrainingEndTime` the server records when it marks the job Completed (staging the S3 channel,
starting the instance, reading the CSV, training, packing and uploading the model). The
reference is a fresh Python process that reads the same CSV file with numpy and fits the library
with the same parameters. Target (issue 4): ratio <= 1.15 at 100k rows.
Random Cut Forest has no reference implementation in a common library; scikit-learn's
IsolationForest (same tree count and sample size) stands in as the nearest tree-ensemble detector.
With `--repeat N` each algorithm runs N (job, reference) pairs back to back and prints the medians
and each pair's ratio, for a host whose timings are noisy.
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _salvia import running_salvia

ACCOUNT = "382416733822.dkr.ecr.us-east-1.amazonaws.com"
LOAD = "import numpy as np\ndata = np.loadtxt({path!r}, delimiter=',')\n"
# How often the job's status is read. Each DescribeTrainingJob costs the server (and this boto3
# client, on the same machine) a few milliseconds of CPU: at 50 a second that was enough to slow
# the job's own OpenMP threads (LightGBM's most of all) on a 2-core host, while the reference
# runs alone. The job's time ends at its `TrainingEndTime` (when the server had packed and
# uploaded the model and marked it Completed), so this interval does not add to it.
POLL_SECONDS = 0.1


@dataclass
class Bench:
    name: str
    image: str
    hyperparameters: dict[str, str]
    labeled: bool
    reference: str  # Python code fitting the library on `data` (label in column 0 if labeled)
    aliases: tuple[str, ...] = ()  # other names --only accepts
    sparse: bool = False  # a one-hot rating set in RecordIO-protobuf (the reference: .npz)


BENCHES = [
    Bench(
        "xgboost",
        f"{ACCOUNT}/sagemaker-xgboost:1.7-1",
        {"objective": "binary:logistic", "num_round": "100", "max_depth": "6", "eta": "0.3"},
        True,
        "import xgboost as xgb\nxgb.train({'objective': 'binary:logistic', 'max_depth': 6,"
        " 'eta': 0.3}, xgb.DMatrix(data[:, 1:], label=data[:, 0]), 100)\n",
    ),
    Bench(
        "lightgbm",
        "salvia/lightgbm",
        {"num_boost_round": "100", "learning_rate": "0.1", "num_leaves": "64"},
        True,
        # the very parameters the algorithm derives from these hyperparameters (SageMaker's
        # LightGBM defaults differ from the library's), so both sides train the same model
        "import lightgbm as lgb\nfrom salvia.algorithms import lightgbm as algo, tabular\n"
        "hps = algo.SPEC.parse_hyperparameters({'num_boost_round': '100', "
        "'learning_rate': '0.1', 'num_leaves': '64'})\n"
        "params = algo.lightgbm_params(hps, tabular.detect_problem(data[:, 0]))\n"
        "lgb.train(params, lgb.Dataset(data[:, 1:], data[:, 0]), 100)\n",
    ),
    Bench(
        "catboost",
        "salvia/catboost",
        {"iterations": "100", "learning_rate": "0.1", "depth": "6"},
        True,
        "import catboost as cb\nfrom salvia.algorithms import catboost as algo, tabular\n"
        "hps = algo.SPEC.parse_hyperparameters({'iterations': '100', "
        "'learning_rate': '0.1', 'depth': '6'})\n"
        "params = algo.catboost_params(hps, tabular.detect_problem(data[:, 0]))\n"
        "cb.CatBoost(params).fit(cb.Pool(data[:, 1:], label=data[:, 0]))\n",
    ),
    Bench(
        "linear-learner",
        f"{ACCOUNT}/linear-learner:1",
        {"predictor_type": "binary_classifier"},
        True,
        "from sklearn.linear_model import LogisticRegression\n"
        "from sklearn.preprocessing import StandardScaler\n"
        "LogisticRegression().fit(StandardScaler().fit_transform(data[:, 1:]), data[:, 0])\n",
    ),
    Bench(
        "kmeans",
        f"{ACCOUNT}/kmeans:1",
        {"k": "10", "feature_dim": "20"},
        False,
        "from sklearn.cluster import KMeans\nKMeans(n_clusters=10, n_init=10).fit(data)\n",
    ),
    Bench(
        "pca",
        f"{ACCOUNT}/pca:1",
        {"num_components": "5", "feature_dim": "20", "mini_batch_size": "1000"},
        False,
        "from sklearn.decomposition import PCA\nPCA(n_components=5).fit(data)\n",
    ),
    Bench(
        "knn",
        f"{ACCOUNT}/knn:1",
        {"k": "10", "sample_size": "100000", "predictor_type": "classifier", "feature_dim": "20"},
        True,
        "from sklearn.neighbors import KNeighborsClassifier\n"
        "KNeighborsClassifier(n_neighbors=10).fit(data[:, 1:], data[:, 0])\n",
    ),
    Bench(
        "randomcutforest",
        f"{ACCOUNT}/randomcutforest:1",
        {"num_trees": "100", "num_samples_per_tree": "256", "feature_dim": "20"},
        False,
        "from sklearn.ensemble import IsolationForest\n"
        "IsolationForest(n_estimators=100, max_samples=256).fit(data)\n",
        aliases=("rcf",),
    ),
    Bench(
        "factorization-machines",
        f"{ACCOUNT}/factorization-machines:1",
        {
            "feature_dim": "1500",
            "num_factors": "8",
            "predictor_type": "regressor",
            "epochs": "5",
            "mini_batch_size": "1000",
        },
        True,
        # no common library has factorization machines: scikit-learn's SGDRegressor fits the
        # same one-hot rows for as many epochs, the model FM extends with its factor term
        "from sklearn.linear_model import SGDRegressor\n"
        "SGDRegressor(max_iter=5, tol=None).fit(features, labels)\n",
        aliases=("fm",),
        sparse=True,
    ),
]
SPARSE_LOAD = (
    "import numpy as np\nfrom scipy import sparse\nfeatures = sparse.load_npz({path!r})\n"
    "labels = np.load({labels!r})\n"
)


def dataset(rows: int, labeled: bool) -> bytes:
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=rows, n_features=20, n_informative=10, random_state=0)
    table = np.column_stack([y, x]) if labeled else x
    buffer = io.StringIO()
    np.savetxt(buffer, table, delimiter=",", fmt="%.6g")
    return buffer.getvalue().encode()


def sparse_dataset(rows: int, directory: Path) -> tuple[bytes, Path]:
    """Ratings of 1,000 users x 500 items as one-hot rows: (RecordIO-protobuf for the job,
    the .npz the reference reads; its labels beside it)."""
    from scipy import sparse

    from salvia.algorithms import recordio

    rng = np.random.default_rng(0)
    users, items = 1000, 500
    u, i = rng.integers(0, users, rows), rng.integers(0, items, rows)
    taste = (rng.normal(size=(users, 4))[u] * rng.normal(size=(items, 4))[i]).sum(axis=1)
    labels = (3 + taste + rng.normal(0, 0.5, rows)).astype(np.float32)
    one_hot = sparse.csr_matrix(
        (np.ones(2 * rows, np.float32), np.c_[u, users + i].ravel(), np.arange(0, 2 * rows + 1, 2)),
        shape=(rows, users + items),
    )
    path = directory / "ratings.npz"
    sparse.save_npz(path, one_hot)
    np.save(directory / "ratings-labels.npy", labels)
    out = io.BytesIO()
    recordio.write_dataset(out, one_hot, labels)
    return out.getvalue(), path


def reference_seconds(bench: Bench, path: Path) -> float:
    load = (
        SPARSE_LOAD.format(path=str(path), labels=str(path.parent / "ratings-labels.npy"))
        if bench.sparse
        else LOAD.format(path=str(path))
    )
    code = load + textwrap.dedent(bench.reference)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def job_seconds(sm: object, bench: Bench, name: str) -> float:
    started = time.time()  # the server, on this machine, stamps the job's end on the same clock
    sm.create_training_job(  # type: ignore[attr-defined]
        TrainingJobName=name,
        RoleArn="arn:aws:iam::123456789012:role/Bench",
        AlgorithmSpecification={"TrainingImage": bench.image, "TrainingInputMode": "File"},
        HyperParameters=bench.hyperparameters,
        InputDataConfig=[
            {
                "ChannelName": "train",
                "ContentType": "application/x-recordio-protobuf" if bench.sparse else "text/csv",
                "DataSource": {
                    "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://bench/{bench.name}/"}
                },
            }
        ],
        OutputDataConfig={"S3OutputPath": "s3://bench/output"},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
        StoppingCondition={"MaxRuntimeInSeconds": 3600},
    )
    while True:
        job = sm.describe_training_job(TrainingJobName=name)  # type: ignore[attr-defined]
        if job["TrainingJobStatus"] in {"Completed", "Failed", "Stopped"}:
            if job["TrainingJobStatus"] != "Completed":
                raise RuntimeError(f"{name}: {job.get('FailureReason')}")
            return float(job["TrainingEndTime"].timestamp()) - started
        time.sleep(POLL_SECONDS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--only", default="")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="pairs (job, reference) per algorithm; the figures are their medians",
    )
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat: {args.repeat} is not a positive count")
    wanted = {name.strip() for name in args.only.split(",") if name.strip()}
    known = {name for b in BENCHES for name in (b.name, *b.aliases)}
    if wanted - known:
        parser.error(f"--only: unknown {sorted(wanted - known)}; choose from {sorted(known)}")
    chosen = [b for b in BENCHES if not wanted or wanted & {b.name, *b.aliases}]
    with running_salvia() as salvia:
        s3, sm = salvia.client("s3"), salvia.client("sagemaker")
        s3.create_bucket(Bucket="bench")
        files = {}
        for labeled in (True, False):
            path = salvia.home / f"data-{labeled}.csv"
            path.write_bytes(dataset(args.rows, labeled))
            files[labeled] = path
        print(f"{args.rows} rows x 20 features")
        spread = "  ratios" if args.repeat > 1 else ""
        print(f"{'algorithm':22} {'salvia s':>9} {'reference s':>12} {'ratio':>6}{spread}")
        for index, bench in enumerate(chosen):
            reference_file = files[bench.labeled]
            if bench.sparse:
                records, reference_file = sparse_dataset(args.rows, salvia.home)
                s3.put_object(Bucket="bench", Key=f"{bench.name}/data.rec", Body=records)
            else:
                s3.upload_file(str(reference_file), "bench", f"{bench.name}/data.csv")
            ours, theirs = [], []
            for attempt in range(args.repeat):  # paired, so that both see the same conditions
                name = f"bench-{index}-{attempt}-{int(time.time())}"
                ours.append(job_seconds(sm, bench, name))
                theirs.append(reference_seconds(bench, reference_file))
            mine, reference = statistics.median(ours), statistics.median(theirs)
            pairs = " ".join(f"{a / b:.2f}" for a, b in zip(ours, theirs, strict=True))
            spread = f"  {pairs}" if args.repeat > 1 else ""
            print(f"{bench.name:22} {mine:9.2f} {reference:12.2f} {mine / reference:6.2f}{spread}")
    print("target: ratio <= 1.15")


if __name__ == "__main__":
    main()
