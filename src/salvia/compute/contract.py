"""SageMaker's training container contract, as pure functions.

What a training container sees (`shared/reference/contract.md` section (a)): the `/opt/ml`
tree, its three config files, and the environment and command line that the SageMaker training
toolkit (TTK, `sagemaker-training`) derives from them. Each function here reproduces one piece of
that, so a script written for SageMaker finds what it expects:

- `write_config`: `input/config/{hyperparameters,inputdataconfig,resourceconfig}.json` and the
  directories of the tree;
- `training_env`: every `SM_*` variable of TTK's `Environment.to_env_vars()`, plus the variables
  TTK, the PyTorch container and SageMaker itself set;
- `user_args`: the script's command line (TTK `mapping.to_cmd_args`);
- `script_command`: how the entry point is run (TTK `process.ProcessRunner._create_command`,
  `torch_distributed.TorchDistributedRunner`);
- `stage_code`: `sagemaker_submit_directory` extracted into `code/`
  (TTK `files.download_and_extract`);
- `launcher_environment` and `write_marker`: what the engine hands the in-instance launcher
  (`salvia.compute.launcher`), which applies the rest of this module inside the instance.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from salvia.errors import ValidationException
from salvia.store.objects import ObjectStore, parse_url

if TYPE_CHECKING:
    from salvia.compute.runtimes import Runtime

__all__ = [
    "DEFAULT_MASTER_PORT",
    "INSTANCE_MARKER",
    "OPT_ML",
    "TorchRun",
    "decode_hyperparameters",
    "framework_parameters",
    "input_data_config_json",
    "launcher_environment",
    "read_instance_marker",
    "resource_config_json",
    "script_command",
    "split_hyperparameters",
    "stage_code",
    "submit_directory",
    "training_env",
    "user_args",
    "write_config",
    "write_instance_marker",
    "write_marker",
]

OPT_ML = "/opt/ml"
# Written by the engine in the instance root; the launcher finds the same token at
# /opt/ml/<INSTANCE_MARKER> when the executor mounted the instance root at /opt/ml.
INSTANCE_MARKER = ".salvia-instance"
DEFAULT_MASTER_PORT = 7777  # the port the PyTorch container and TTK's torchrun runner use
GROUP_NAME = "homogeneousCluster"
NETWORK_INTERFACE = "eth0"

# TTK params.SAGEMAKER_HYPERPARAMETERS: split off from the user's hyperparameters, and not
# repeated in SM_FRAMEWORK_PARAMS either.
_SAGEMAKER_HYPERPARAMETERS = (
    "sagemaker_program",
    "sagemaker_submit_directory",
    "sagemaker_enable_cloudwatch_metrics",
    "sagemaker_region",
    "sagemaker_container_log_level",
    "sagemaker_job_name",
    "default_user_module_name",
    "_tuning_objective_metric",
    "sagemaker_s3_output",
)
# Framework parameters that make TTK put the current instance group in the distribution groups.
_DISTRIBUTION_FLAGS = (
    "sagemaker_mpi_enabled",
    "sagemaker_parameter_server_enabled",
    "sagemaker_distributed_dataparallel_enabled",
    "sagemaker_pytorch_ddp_enabled",
    "sagemaker_pytorch_xla_multi_worker_enabled",
    "sagemaker_multi_worker_mirrored_strategy_enabled",
    "sagemaker_torch_distributed_enabled",
)


# the tree under the base directory, as TTK's environment module names it
_LAYOUT = {
    "code": ("code",),
    "model": ("model",),
    "input": ("input",),
    "input_config": ("input", "config"),
    "output": ("output",),
    "output_data": ("output", "data"),
    "output_intermediate": ("output", "intermediate"),
}
# the Environment properties that TTK's to_env_vars() also exports as SM_<NAME>
_ENV_PROPERTIES = (
    "hosts", "network_interface_name", "user_entry_point", "resource_config",
    "input_data_config", "output_data_dir", "current_host", "current_instance_type",
    "current_instance_group", "current_instance_group_hosts", "instance_groups",
    "instance_groups_dict", "distribution_instance_groups", "is_hetero", "module_name",
    "log_level", "framework_module", "input_dir", "input_config_dir", "output_dir", "num_cpus",
    "num_gpus", "num_neurons", "model_dir", "module_dir", "output_intermediate_dir",
)  # fmt: skip


# -- config files ---------------------------------------------------------------------------
def input_data_config_json(
    input_data_config: Sequence[Mapping[str, Any]], training_input_mode: str = "File"
) -> dict[str, dict[str, str]]:
    """`inputdataconfig.json` from CreateTrainingJob's `InputDataConfig` (a list of Channels).

    A channel's `InputMode` overrides the job's `AlgorithmSpecification.TrainingInputMode`."""
    config: dict[str, dict[str, str]] = {}
    for channel in input_data_config:
        entry: dict[str, str] = {}
        if channel.get("ContentType"):
            entry["ContentType"] = str(channel["ContentType"])
        entry["TrainingInputMode"] = str(channel.get("InputMode") or training_input_mode)
        s3 = channel.get("DataSource", {}).get("S3DataSource")
        if s3 is not None:
            entry["S3DistributionType"] = str(s3.get("S3DataDistributionType") or "FullyReplicated")
        entry["RecordWrapperType"] = str(channel.get("RecordWrapperType") or "None")
        config[str(channel["ChannelName"])] = entry
    return config


def resource_config_json(host: str, hosts: Sequence[str], instance_type: str) -> dict[str, Any]:
    """`resourceconfig.json` as SageMaker writes it for a homogeneous cluster."""
    ordered = sorted(hosts)
    return {
        "current_host": host,
        "current_instance_type": instance_type,
        "current_group_name": GROUP_NAME,
        "hosts": ordered,
        "instance_groups": [
            {"instance_group_name": GROUP_NAME, "instance_type": instance_type, "hosts": ordered}
        ],
        "network_interface_name": NETWORK_INTERFACE,
    }


def write_config(
    root: Path,
    hyperparameters: Mapping[str, str],
    input_data_config: Sequence[Mapping[str, Any]],
    host: str,
    hosts: Sequence[str],
    instance_type: str,
    training_input_mode: str = "File",
) -> None:
    """Lay out one instance's `/opt/ml` under `root`: the three config files and the
    directories `input/data/<channel>`, `model`, `output/data`, `output/intermediate`,
    `checkpoints` and `code`. Existing content is kept (a restarted job keeps its checkpoints)."""
    config_dir = root / "input" / "config"
    for path in (
        config_dir,
        root / "model",
        root / "output" / "data",
        root / "output" / "intermediate",
        root / "checkpoints",
        root / "code",
    ):
        path.mkdir(parents=True, exist_ok=True)
    data_config = input_data_config_json(input_data_config, training_input_mode)
    for channel in data_config:
        (root / "input" / "data" / channel).mkdir(parents=True, exist_ok=True)
    _write_json(config_dir / "hyperparameters.json", dict(hyperparameters))
    _write_json(config_dir / "inputdataconfig.json", data_config)
    _write_json(
        config_dir / "resourceconfig.json", resource_config_json(host, hosts, instance_type)
    )


def write_instance_marker(root: Path, identity: str | None = None) -> str:
    """Write the marker that tells the launcher it sees `root` mounted at /opt/ml; returns the
    token written (unique to this instance unless `identity` is given)."""
    token = identity or uuid.uuid4().hex
    (root / INSTANCE_MARKER).write_text(token, encoding="utf-8")
    return token


def write_marker(root: Path, job_name: str, host: str) -> str:
    """`write_instance_marker` with a token naming the job and host (and unique to this run)."""
    return write_instance_marker(root, f"{job_name}/{host}/{uuid.uuid4().hex}")


def read_instance_marker(root: Path | str) -> str | None:
    try:
        return Path(root, INSTANCE_MARKER).read_text(encoding="utf-8")
    except OSError:
        return None


def _write_json(path: Path, record: object) -> None:
    path.write_text(json.dumps(record), encoding="utf-8")


# -- hyperparameters ------------------------------------------------------------------------
def decode_hyperparameters(hyperparameters: Mapping[str, str]) -> dict[str, Any]:
    """TTK `read_hyperparameters`: `json.loads` each value, keeping the raw string when that
    fails (so `hello` stays `hello` and `"\\"adam\\""` becomes `adam`)."""
    decoded: dict[str, Any] = {}
    for key, value in hyperparameters.items():
        try:
            decoded[key] = json.loads(value)
        except (ValueError, TypeError):
            decoded[key] = value
    return decoded


def split_hyperparameters(
    hyperparameters: Mapping[str, str],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(user hyperparameters, SageMaker's own), both decoded (TTK `mapping.split_by_criteria`).
    SageMaker's own are the `sagemaker_*` keys plus `_tuning_objective_metric` and
    `default_user_module_name`."""
    decoded = decode_hyperparameters(hyperparameters)
    own = {
        k: v
        for k, v in decoded.items()
        if k in _SAGEMAKER_HYPERPARAMETERS or k.startswith("sagemaker_")
    }
    user = {k: v for k, v in decoded.items() if k not in own}
    return user, own


def submit_directory(hyperparameters: Mapping[str, str]) -> str | None:
    """The decoded `sagemaker_submit_directory` (where the SDK uploaded the code), if any."""
    _, own = split_hyperparameters(hyperparameters)
    value = own.get("sagemaker_submit_directory")
    return str(value) if value else None


def framework_parameters(hyperparameters: Mapping[str, str]) -> dict[str, Any]:
    """SM_FRAMEWORK_PARAMS: the `sagemaker_*` extras, e.g. `sagemaker_torch_distributed_enabled`."""
    _, own = split_hyperparameters(hyperparameters)
    return {k: v for k, v in own.items() if k not in _SAGEMAKER_HYPERPARAMETERS}


def user_args(hyperparameters: Mapping[str, str]) -> list[str]:
    """The script's command line (TTK `mapping.to_cmd_args` over the user's hyperparameters):
    keys sorted, `--key value` (`-k value` for a one-character key), a dict as `k1=v1,k2=v2`,
    anything else `str(value)`."""
    user, _ = split_hyperparameters(hyperparameters)
    return _cmd_args(user)


def _cmd_args(mapping: Mapping[str, Any]) -> list[str]:
    args: list[str] = []
    for key in sorted(mapping):
        name = _text(key)
        args.append(("--" if len(name) > 1 else "-") + name if name else "")
        value = mapping[key]
        if isinstance(value, Mapping):
            args.append(",".join(f"{k}={v}" for k, v in sorted(value.items())))
        else:
            args.append(_text(value))
    return args


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin1")
    return str(value)


def _env_value(value: Any) -> str:
    """TTK `mapping.to_env_vars`: strings raw, None empty, anything else compact sorted JSON."""
    if isinstance(value, bytes):
        return value.decode("latin1")
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


# -- the environment ------------------------------------------------------------------------
def training_env(
    base: str,
    *,
    hyperparameters: Mapping[str, str],
    input_data_config: Mapping[str, Mapping[str, str]],
    resource_config: Mapping[str, Any],
    job_name: str,
    job_arn: str,
    region: str,
    num_cpus: int,
    num_gpus: int = 0,
    host_addresses: Mapping[str, str] | None = None,
    master_port: int = DEFAULT_MASTER_PORT,
    entry_point: str | None = None,
    framework_module: str | None = None,
    python_path: Sequence[str] = (),
) -> dict[str, str]:
    """The variables a script sees in a SageMaker training container whose `/opt/ml` is `base`.

    `hyperparameters` is `hyperparameters.json` (string values, as on the wire),
    `input_data_config` is `inputdataconfig.json` and `resource_config` is `resourceconfig.json`.
    `entry_point` overrides `sagemaker_program` (TTK reads `SAGEMAKER_PROGRAM` first);
    `framework_module` is TTK's `SAGEMAKER_TRAINING_MODULE`. `host_addresses` maps host names to
    the addresses at which they are reachable (MASTER_ADDR); a host missing from it is its own
    address. `python_path` is appended to PYTHONPATH after the code directory.
    """
    user_hps, own = split_hyperparameters(hyperparameters)
    framework_params = {k: v for k, v in own.items() if k not in _SAGEMAKER_HYPERPARAMETERS}
    paths = {name: os.path.join(base, *parts) for name, parts in _LAYOUT.items()}
    hosts = list(resource_config["hosts"])
    current_host = str(resource_config["current_host"])
    instance_type = str(resource_config.get("current_instance_type", "local"))
    group = str(resource_config.get("current_group_name", GROUP_NAME))
    groups_config = list(resource_config.get("instance_groups", []))
    network_interface = str(resource_config.get("network_interface_name", NETWORK_INTERFACE))

    program = entry_point or own.get("sagemaker_program")
    module_name = _text(program) if program is not None else "None"  # TTK: str(None)
    if module_name.endswith(".py"):
        module_name = module_name[:-3]
    module_dir = _text(own.get("sagemaker_submit_directory", paths["code"]))
    log_level = own.get("sagemaker_container_log_level", logging.INFO)

    distribution_groups = framework_params.get("sagemaker_distribution_instance_groups")
    if distribution_groups is None:
        enabled = any(framework_params.get(flag, False) for flag in _DISTRIBUTION_FLAGS)
        distribution_groups = [group] if enabled else []
    distribution_hosts: list[str] = []
    if groups_config:
        for g in groups_config:
            if g["instance_group_name"] in distribution_groups:
                distribution_hosts.extend(g["hosts"])
    else:
        distribution_hosts = hosts.copy()
    current_group_hosts = next(
        (list(g["hosts"]) for g in groups_config if g["instance_group_name"] == group), []
    )
    master_hostname = distribution_hosts[0] if distribution_hosts else hosts[0]
    channel_dirs = {name: os.path.join(base, "input", "data", name) for name in input_data_config}
    cmd_args = _cmd_args(user_hps)

    # TTK Environment's public properties: SM_TRAINING_ENV is `dict(Environment())`.
    properties: dict[str, Any] = {
        "additional_framework_parameters": framework_params,
        "channel_input_dirs": channel_dirs,
        "current_host": current_host,
        "current_instance_group": group,
        "current_instance_group_hosts": current_group_hosts,
        "current_instance_type": instance_type,
        "distribution_hosts": distribution_hosts,
        "distribution_instance_groups": distribution_groups,
        "framework_module": framework_module,
        "hosts": hosts,
        "hyperparameters": user_hps,
        "input_config_dir": paths["input_config"],
        "input_data_config": dict(input_data_config),
        "input_dir": paths["input"],
        "instance_groups": [g["instance_group_name"] for g in groups_config],
        "instance_groups_dict": {g["instance_group_name"]: g for g in groups_config},
        "is_hetero": len(groups_config) > 1,
        "is_master": current_host == master_hostname,
        "is_modelparallel_enabled": None,
        "is_smddpmprun_installed": False,
        "is_smddprun_installed": False,
        "job_name": job_name,
        "log_level": log_level,
        "master_hostname": master_hostname,
        "model_dir": paths["model"],
        "module_dir": module_dir,
        "module_name": module_name,
        "network_interface_name": network_interface,
        "num_cpus": num_cpus,
        "num_gpus": num_gpus,
        "num_neurons": 0,
        "output_data_dir": paths["output_data"],
        "output_dir": paths["output"],
        "output_intermediate_dir": paths["output_intermediate"],
        "resource_config": dict(resource_config),
        "topology": list(resource_config.get("topology", [])),
        "user_entry_point": program,
    }
    # TTK Environment.to_env_vars(): mostly the same properties, a few renamed or added
    sm: dict[str, Any] = {name: properties[name] for name in _ENV_PROPERTIES}
    sm.update(
        hps=user_hps,
        framework_params=framework_params,
        channels=sorted(channel_dirs),
        training_env=properties,
        user_args=cmd_args,
    )
    if properties["topology"]:
        sm["topology"] = properties["topology"]
    for name, path in channel_dirs.items():
        sm[f"channel_{name}"] = path
    for key, value in user_hps.items():
        sm[f"hp_{key}"] = value
    env = {f"SM_{str(k).upper()}": _env_value(v) for k, v in sm.items()}

    addresses = dict(host_addresses or {})
    env.update(
        {
            # SageMaker itself
            "TRAINING_JOB_NAME": job_name,
            "TRAINING_JOB_ARN": job_arn,
            "AWS_REGION": region,
            # TTK environment.Environment.__init__ and write_env_vars
            "SAGEMAKER_JOB_NAME": _text(own.get("sagemaker_job_name", job_name)),
            "CURRENT_HOST": current_host,
            "SAGEMAKER_REGION": _text(own.get("sagemaker_region", region)),
            "PYTHONPATH": os.pathsep.join([paths["code"], *python_path]),
            # the PyTorch container (_set_distributed_environment)
            "MASTER_ADDR": addresses.get(master_hostname, master_hostname),
            "MASTER_PORT": str(master_port),
        }
    )
    if len(hosts) > 1:
        # torch.distributed's env:// rendezvous with one process per host; torchrun overrides
        # both for the processes it starts.
        env["WORLD_SIZE"] = str(len(hosts))
        env["RANK"] = str(sorted(hosts).index(current_host))
    if base != OPT_ML:
        env["SAGEMAKER_BASE_DIR"] = base  # where TTK-based code looks instead of /opt/ml
    return env


# -- the command ----------------------------------------------------------------------------
@dataclass(frozen=True)
class TorchRun:
    """TTK's torchrun launch (`sagemaker_torch_distributed_enabled`): one node per host."""

    nnodes: int
    nproc_per_node: int
    master_addr: str
    master_port: int
    node_rank: int


def script_command(
    code_dir: Path,
    entry_point: str,
    args: Sequence[str],
    python: str,
    torchrun: TorchRun | None = None,
) -> list[str]:
    """The command that runs `entry_point` from `code_dir` (TTK `_entry_point_type.get`):

    - `*.sh`, or a file that is neither a Python script nor in a package: `/bin/sh -c "./<entry>
      <args>"` (the file must be executable: the launcher sets its mode);
    - `setup.py` in `code_dir`: `python -m <module> <args>` (the package is installed first);
    - `*.py`: `python <entry> <args>`, or torchrun's command when `torchrun` is given.
    """
    if entry_point.endswith(".sh"):
        kind = "command"
    elif (code_dir / "setup.py").exists():
        kind = "package"
    elif entry_point.endswith(".py"):
        kind = "program"
    else:
        kind = "command"
    if torchrun is not None:
        if kind != "program":
            raise ValidationException(
                f"torch_distributed runs Python scripts only; entry point {entry_point!r} is a "
                f"{'Python package' if kind == 'package' else 'command'}."
            )
        return [
            python,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            str(torchrun.nnodes),
            "--nproc_per_node",
            str(torchrun.nproc_per_node),
            # TTK passes these only for several nodes; one node with torchrun's default port
            # would collide with every other single-node job on this machine.
            "--master_addr",
            torchrun.master_addr,
            "--master_port",
            str(torchrun.master_port),
            "--node_rank",
            str(torchrun.node_rank),
            entry_point,
            *args,
        ]
    if kind == "package":
        return [python, "-m", entry_point.removesuffix(".py"), *args]
    if kind == "program":
        return [python, entry_point, *args]
    return ["/bin/sh", "-c", " ".join([f"./{entry_point}", *(shlex.quote(a) for a in args)])]


# -- the code -------------------------------------------------------------------------------
def stage_code(object_store: ObjectStore, submit_directory_uri: str, code_dir: Path) -> bool:
    """Put the user's code in `code_dir` unless it already holds something (TTK
    `files.download_and_extract`). `submit_directory_uri` is `sagemaker_submit_directory`: an
    `s3://` `sourcedir.tar.gz`, or a `file://` URL or local path of a directory, a tarball or a
    single file. Returns whether anything was staged."""
    code_dir.mkdir(parents=True, exist_ok=True)
    if any(code_dir.iterdir()):
        return False
    uri = submit_directory_uri.strip()
    if uri.startswith("s3://"):
        local = object_store.local_path(uri)
        if local is not None and local.is_file():
            _extract(local, code_dir)
            return True
        with tempfile.TemporaryDirectory(prefix="salvia-code-") as tmp:
            tarball = Path(tmp) / "sourcedir.tar.gz"
            with object_store.open(uri) as reader, tarball.open("wb") as out:
                for chunk in reader.iter_chunks():
                    out.write(chunk)
            _extract(tarball, code_dir)
        return True
    path = Path(parse_url(uri)[1]) if uri.startswith("file://") else Path(uri)
    if path.is_dir():
        if path.resolve() != code_dir.resolve():
            shutil.copytree(path, code_dir, dirs_exist_ok=True)
    elif path.is_file() and tarfile.is_tarfile(path):
        _extract(path, code_dir)
    elif path.is_file():
        shutil.copy2(path, code_dir)
    else:
        raise ValidationException(f"sagemaker_submit_directory {uri!r} does not exist.")
    return True


def _extract(tarball: Path, dest: Path) -> None:
    try:
        with tarfile.open(tarball, "r:*") as archive:
            # "data" refuses absolute paths, links out of `dest` and device files.
            archive.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise ValidationException(f"Could not extract the source directory: {exc}") from exc


# -- what the engine hands the launcher -----------------------------------------------------
# The launcher's own variables (none reach the script). Documented in salvia.compute.launcher.
ENV_JOB_NAME = "SALVIA_JOB_NAME"
ENV_JOB_ARN = "SALVIA_JOB_ARN"
ENV_JOB_REGION = "SALVIA_JOB_REGION"
ENV_INSTANCE_HOST = "SALVIA_INSTANCE_HOST"
ENV_INSTANCE_HOSTS = "SALVIA_INSTANCE_HOSTS"
ENV_INSTANCE_TYPE = "SALVIA_INSTANCE_TYPE"
ENV_VCPUS = "SALVIA_INSTANCE_VCPUS"
ENV_GPUS = "SALVIA_INSTANCE_GPUS"
ENV_HOST_ADDRESSES = "SALVIA_HOST_ADDRESSES"
ENV_MASTER_PORT = "SALVIA_MASTER_PORT"
ENV_PYTHON = "SALVIA_PYTHON"
ENV_ENTRY_POINT = "SALVIA_ENTRY_POINT"
ENV_TRAINING_MODULE = "SALVIA_TRAINING_MODULE"
ENV_CONTAINER_ENTRYPOINT = "SALVIA_CONTAINER_ENTRYPOINT"
ENV_CONTAINER_ARGUMENTS = "SALVIA_CONTAINER_ARGUMENTS"
ENV_ENVS_DIR = "SALVIA_ENVS_DIR"
ENV_ATTEMPT = "SALVIA_ATTEMPT"


def launcher_environment(
    *,
    job_name: str,
    job_arn: str,
    region: str,
    host: str,
    hosts: Sequence[str],
    instance_type: str,
    runtime: Runtime | None = None,
    python: str | None = None,
    vcpus: int | None = None,
    gpus: int = 0,
    addresses: Mapping[str, str] | None = None,
    master_port: int = DEFAULT_MASTER_PORT,
    envs_dir: Path | str | None = None,
    entry_point: str | None = None,
    training_module: str | None = None,
    entrypoint: Sequence[str] | None = None,
    arguments: Sequence[str] | None = None,
    attempt: int | None = None,
) -> dict[str, str]:
    """The `SALVIA_*` variables that tell `salvia.compute.launcher` about its instance.

    `runtime` gives the interpreter and the training module (`python`/`training_module`
    override it); `vcpus` None means the host's CPU count; `addresses` maps each host to where
    it is reachable (MASTER_ADDR); `entrypoint`/`arguments` are AlgorithmSpecification's
    ContainerEntrypoint/ContainerArguments; `entry_point` overrides `sagemaker_program`."""
    env = {
        ENV_JOB_NAME: job_name,
        ENV_JOB_ARN: job_arn,
        ENV_JOB_REGION: region,
        ENV_INSTANCE_HOST: host,
        ENV_INSTANCE_HOSTS: json.dumps(sorted(hosts)),
        ENV_INSTANCE_TYPE: instance_type,
        ENV_GPUS: str(gpus),
        ENV_HOST_ADDRESSES: json.dumps(dict(addresses or {})),
        ENV_MASTER_PORT: str(master_port),
    }
    python = python or (runtime.python if runtime is not None else None)
    training_module = training_module or (runtime.training_module if runtime else None)
    optional: dict[str, object] = {
        ENV_PYTHON: python,
        ENV_VCPUS: vcpus,
        ENV_ENVS_DIR: envs_dir,
        ENV_ENTRY_POINT: entry_point,
        ENV_TRAINING_MODULE: training_module,
        ENV_ATTEMPT: attempt,
        ENV_CONTAINER_ENTRYPOINT: json.dumps(list(entrypoint)) if entrypoint else None,
        ENV_CONTAINER_ARGUMENTS: json.dumps(list(arguments)) if arguments else None,
    }
    env.update({name: str(value) for name, value in optional.items() if value is not None})
    return env
