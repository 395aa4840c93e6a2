"""Processing-job overhead: (CreateProcessingJob -> Completed, outputs in S3) minus the same
script's run time as a bare subprocess, medians of N runs.

    .venv/bin/python benchmarks/processing_overhead.py [--runs 10]

The script is a small real one (scikit-learn's StandardScaler over iris read from its input
path, the scaled CSV written to its output path). The bare baseline runs it with the same
interpreter on the same files, the paths given as arguments. Target (issue 8): <= 1.5 s per job.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _salvia import running_salvia

SCRIPT = """
import sys
import numpy as np
from sklearn.preprocessing import StandardScaler
source, target = sys.argv[1], sys.argv[2]
data = np.loadtxt(f"{source}/iris.csv", delimiter=",")
scaled = StandardScaler().fit_transform(data[:, 1:])
np.savetxt(f"{target}/scaled.csv", np.column_stack([data[:, 0], scaled]), delimiter=",")
"""


def iris_csv() -> bytes:
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    rows = zip(x, y, strict=True)
    return "\n".join(",".join(str(v) for v in (label, *row)) for row, label in rows).encode()


def bare_seconds(workdir: Path, data: bytes) -> float:
    (workdir / "in").mkdir(parents=True, exist_ok=True)
    (workdir / "out").mkdir(exist_ok=True)
    (workdir / "in" / "iris.csv").write_bytes(data)
    (workdir / "scale.py").write_text(SCRIPT)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "scale.py", str(workdir / "in"), str(workdir / "out")],
        cwd=workdir,
        check=True,
    )
    return time.perf_counter() - started


def job_seconds(sm: object, name: str) -> float:
    started = time.perf_counter()
    sm.create_processing_job(  # type: ignore[attr-defined]
        ProcessingJobName=name,
        RoleArn="arn:aws:iam::123456789012:role/Bench",
        AppSpecification={
            "ImageUri": "salvia/sklearn",
            "ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/scale.py"],
            "ContainerArguments": ["/opt/ml/processing/input/data", "/opt/ml/processing/output"],
        },
        ProcessingInputs=[
            {"InputName": "code", "S3Input": {
                "S3Uri": "s3://bench/code/scale.py", "LocalPath": "/opt/ml/processing/input/code",
                "S3DataType": "S3Prefix", "S3InputMode": "File"}},
            {"InputName": "data", "S3Input": {
                "S3Uri": "s3://bench/data/", "LocalPath": "/opt/ml/processing/input/data",
                "S3DataType": "S3Prefix", "S3InputMode": "File"}},
        ],
        ProcessingOutputConfig={"Outputs": [{"OutputName": "scaled", "S3Output": {
            "S3Uri": f"s3://bench/{name}", "LocalPath": "/opt/ml/processing/output",
            "S3UploadMode": "EndOfJob"}}]},
        ProcessingResources={"ClusterConfig": {
            "InstanceCount": 1, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 1}},
    )  # fmt: skip
    while True:
        job = sm.describe_processing_job(ProcessingJobName=name)  # type: ignore[attr-defined]
        if job["ProcessingJobStatus"] in {"Completed", "Failed", "Stopped"}:
            elapsed = time.perf_counter() - started
            if job["ProcessingJobStatus"] != "Completed":
                raise RuntimeError(f"{name}: {job.get('FailureReason')}")
            return elapsed
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    data = iris_csv()
    with tempfile.TemporaryDirectory() as scratch:
        bare_seconds(Path(scratch) / "warm", data)
        bare = statistics.median(
            bare_seconds(Path(scratch) / f"b{i}", data) for i in range(args.runs)
        )
    with running_salvia() as salvia:
        s3, sm = salvia.client("s3"), salvia.client("sagemaker")
        s3.create_bucket(Bucket="bench")
        s3.put_object(Bucket="bench", Key="data/iris.csv", Body=data)
        s3.put_object(Bucket="bench", Key="code/scale.py", Body=SCRIPT.encode())
        job_seconds(sm, "warmup")  # the first job pays one-time costs
        times = [job_seconds(sm, f"bench-{i}") for i in range(args.runs)]
    median = statistics.median(times)
    print(f"bare subprocess run time (median of {args.runs}): {bare:.3f} s")
    print(f"processing job (median of {args.runs}): {median:.3f} s")
    print(
        f"overhead: {median - bare:.3f} s (min {min(times) - bare:.3f}, "
        f"max {max(times) - bare:.3f}); target <= 1.5 s"
    )


if __name__ == "__main__":
    main()
