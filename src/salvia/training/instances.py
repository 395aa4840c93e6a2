"""Preparing a job's instances: each host's `/opt/ml` tree, data, code, checkpoints, and the
`InstanceSpec` the executor runs (the launcher, with the contract's environment)."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from salvia.algorithms import registry as algorithms
from salvia.compute import channels, contract
from salvia.compute.executor import InstanceSpec
from salvia.compute.instance_types import lookup as lookup_instance_type
from salvia.compute.runtimes import Runtime
from salvia.store.metadata import Record
from salvia.tracking.servers import resolve_tracking_uri
from salvia.training.artifacts import CheckpointSync
from salvia.training.engine import EngineContext

LOG_GROUP = "/aws/sagemaker/TrainingJobs"
# what every instance inherits from the server's environment; everything else is the job's own
_INHERITED = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR", "HOME", "SSL_CERT_FILE", "LD_LIBRARY_PATH")


@dataclass
class Prepared:
    specs: list[InstanceSpec]
    events: dict[str, Path]  # host -> its log stream file
    checkpoints: list[CheckpointSync]
    checkpoint_dirs: list[str]


def hosts_of(record: Record) -> list[str]:
    count = record.body["ResourceConfig"].get("InstanceCount", 1)
    return [f"algo-{i + 1}" for i in range(count)]


def log_stream(record: Record, host: str) -> str:
    return f"{record.name}/{host}-{int(record.creation_time)}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _checkpoint_dir(root: Path, record: Record) -> Path:
    local = (record.body.get("CheckpointConfig") or {}).get("LocalPath", "/opt/ml/checkpoints")
    return root / local.removeprefix("/opt/ml/")


def checkpoint_syncs(ctx: EngineContext, record: Record) -> list[CheckpointSync]:
    uri = (record.body.get("CheckpointConfig") or {}).get("S3Uri")
    if not uri:
        return []
    job_dir = ctx.jobs_dir / record.name
    return [CheckpointSync(ctx.objects, uri, _checkpoint_dir(job_dir / h, record))
            for h in hosts_of(record)]  # fmt: skip


def base_environment(ctx: EngineContext, record: Record) -> dict[str, str]:
    """The environment every instance starts from: the job's `Environment` over the endpoints
    that make an unchanged script's boto3 talk to this server."""
    env = {name: os.environ[name] for name in _INHERITED if name in os.environ}
    region = ctx.settings.region
    env.update(
        AWS_REGION=region,
        AWS_DEFAULT_REGION=region,
        AWS_ACCESS_KEY_ID=os.environ.get("AWS_ACCESS_KEY_ID", "salvia"),
        AWS_SECRET_ACCESS_KEY=os.environ.get("AWS_SECRET_ACCESS_KEY", "salvia"),
        PYTHONUNBUFFERED="1",
    )
    if ctx.public_url:
        env.update(
            AWS_ENDPOINT_URL=ctx.public_url,
            AWS_ENDPOINT_URL_S3=ctx.public_url,
            S3_ENDPOINT_URL=ctx.public_url,
        )
    if ctx.role_credentials is not None and record.body.get("RoleArn"):
        env.update(ctx.role_credentials(record.body["RoleArn"], record.name))
    env.update(record.body.get("Environment") or {})
    if "MLFLOW_TRACKING_URI" in env:  # a managed tracking server's ARN means its URL
        env["MLFLOW_TRACKING_URI"] = resolve_tracking_uri(ctx.store, env["MLFLOW_TRACKING_URI"])
    return env


def prepare(ctx: EngineContext, record: Record, job_dir: Path, attempt: int) -> Prepared:
    from salvia.training.run import JobFailed

    body = record.body
    resources = body["ResourceConfig"]
    instance_type = lookup_instance_type(resources["InstanceType"])
    hosts = hosts_of(record)
    algorithm = body["AlgorithmSpecification"]
    runtime = ctx.runtimes.resolve(algorithm["TrainingImage"])
    hyperparameters = body.get("HyperParameters") or {}
    input_config = body.get("InputDataConfig") or []
    master_port = _free_port()
    base_env = base_environment(ctx, record)
    specs, events, checkpoints, checkpoint_dirs = [], {}, [], []
    mode = algorithm.get("TrainingInputMode", "File")
    submit = contract.decode_hyperparameters(hyperparameters).get("sagemaker_submit_directory")
    for index, host in enumerate(hosts):
        root = job_dir / host
        contract.write_config(
            root, hyperparameters, input_config, host, hosts, resources["InstanceType"], mode
        )
        try:
            channels.stage_channels(
                ctx.objects, input_config, root / "input" / "data", index, len(hosts), mode
            )
            if submit:
                contract.stage_code(ctx.objects, str(submit), root / "code")
        except (channels.ChannelError, OSError) as error:
            raise JobFailed(f"ClientError: {error}") from None
        uri = (body.get("CheckpointConfig") or {}).get("S3Uri")
        if uri:
            local = (body.get("CheckpointConfig") or {}).get("LocalPath", "/opt/ml/checkpoints")
            (root / "input" / "config" / "checkpointconfig.json").write_text(
                json.dumps({"LocalPath": local, "S3Uri": uri})
            )
            directory = _checkpoint_dir(root, record)
            directory.mkdir(parents=True, exist_ok=True)
            sync = CheckpointSync(ctx.objects, uri, directory)
            sync.restore()
            checkpoints.append(sync)
            checkpoint_dirs.append(str(directory))
        stream = ctx.logs_root / LOG_GROUP.strip("/") / f"{log_stream(record, host)}.jsonl"
        stream.parent.mkdir(parents=True, exist_ok=True)
        events[host] = stream
        env = {
            **base_env,
            **contract.launcher_environment(
                job_name=record.name,
                job_arn=record.arn,
                region=ctx.settings.region,
                host=host,
                hosts=hosts,
                instance_type=resources["InstanceType"],
                runtime=runtime,
                vcpus=instance_type.vcpus_on_host,
                addresses={h: "127.0.0.1" for h in hosts},
                master_port=master_port,
                envs_dir=ctx.settings.home / "envs",
                training_module=_algorithm_module(runtime, hyperparameters),
                attempt=attempt,
            ),
        }
        contract.write_marker(root, record.name, host)
        specs.append(
            InstanceSpec(
                job_name=record.name,
                host=host,
                command=[runtime.python, "-m", "salvia.compute.launcher", str(root), str(stream)],
                env=env,
                workdir=root,
                log_path=job_dir / f"{host}.out",
                vcpus=instance_type.vcpus_on_host,
                memory_mib=instance_type.memory_mib_on_host,
                mount_opt_ml=True,
                network_isolation=bool(body.get("EnableNetworkIsolation")),
                labels={"attempt": str(attempt)},
            )
        )
    return Prepared(specs, events, checkpoints, checkpoint_dirs)


def _algorithm_module(runtime: Runtime, hyperparameters: dict[str, str]) -> str | None:
    """The built-in algorithm to run: the image's own, or XGBoost's when its framework image
    comes without a script (SageMaker's XGBoost container in algorithm mode)."""
    if "sagemaker_program" in hyperparameters:
        return None
    if runtime.training_module:
        return runtime.training_module
    spec = algorithms.for_runtime(runtime.name)
    return spec.train if spec else None
