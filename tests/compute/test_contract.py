"""The container contract against `shared/reference/contract.md` section (a): what a SageMaker
script finds in `/opt/ml`, in its environment and on its command line."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from salvia.compute import contract
from salvia.errors import ValidationException
from salvia.store.objects import LocalObjectStore

# What the SageMaker Python SDK v2 sends: json.dumps of every value, plus its script-mode keys.
SDK_HYPERPARAMETERS = {
    "epochs": json.dumps(10),
    "learning-rate": json.dumps(0.01),
    "optimizer": json.dumps("adam"),
    "layers": json.dumps([64, 32]),
    "extra": json.dumps({"a": 1}),
    "plain": "hello",  # not JSON: TTK keeps the raw string
    "sagemaker_program": json.dumps("train.py"),
    "sagemaker_submit_directory": json.dumps("s3://bucket/job/source/sourcedir.tar.gz"),
    "sagemaker_container_log_level": "20",
    "sagemaker_job_name": json.dumps("job-1"),
    "sagemaker_region": json.dumps("eu-west-1"),
    "sagemaker_torch_distributed_enabled": "false",
}

CHANNELS = [
    {
        "ChannelName": "train",
        "ContentType": "text/csv",
        "DataSource": {
            "S3DataSource": {
                "S3DataType": "S3Prefix",
                "S3Uri": "s3://bucket/train/",
                "S3DataDistributionType": "ShardedByS3Key",
            }
        },
    },
    {
        "ChannelName": "validation",
        "InputMode": "FastFile",
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://bucket/val/"}},
    },
]


def make_env(base: str = "/opt/ml", **overrides: object) -> dict[str, str]:
    kwargs: dict = {
        "hyperparameters": SDK_HYPERPARAMETERS,
        "input_data_config": contract.input_data_config_json(CHANNELS),
        "resource_config": contract.resource_config_json(
            "algo-2", ["algo-2", "algo-1"], "ml.m5.xlarge"
        ),
        "job_name": "job-1",
        "job_arn": "arn:aws:sagemaker:us-east-1:123456789012:training-job/job-1",
        "region": "us-east-1",
        "num_cpus": 4,
        "host_addresses": {"algo-1": "10.0.0.1", "algo-2": "10.0.0.2"},
        "master_port": 29511,
    }
    kwargs.update(overrides)
    return contract.training_env(base, **kwargs)


def test_user_args_match_the_verified_toolkit_output() -> None:
    assert contract.user_args(SDK_HYPERPARAMETERS) == [
        "--epochs", "10",
        "--extra", "a=1",
        "--layers", "[64, 32]",
        "--learning-rate", "0.01",
        "--optimizer", "adam",
        "--plain", "hello",
    ]  # fmt: skip


def test_user_args_single_character_keys_and_odd_values() -> None:
    args = contract.user_args({"b": "1", "flag": "true", "none": "null", "d": '{"y": 2, "x": 1}'})
    assert args == ["-b", "1", "-d", "x=1,y=2", "--flag", "True", "--none", ""]


def test_write_config_lays_out_opt_ml(tmp_path: Path) -> None:
    contract.write_config(
        tmp_path, SDK_HYPERPARAMETERS, CHANNELS, "algo-1", ["algo-2", "algo-1"], "ml.m5.xlarge"
    )
    for sub in ("model", "output/data", "output/intermediate", "checkpoints", "code",
                "input/data/train", "input/data/validation"):  # fmt: skip
        assert (tmp_path / sub).is_dir(), sub
    config = tmp_path / "input" / "config"
    assert json.loads((config / "hyperparameters.json").read_text()) == SDK_HYPERPARAMETERS
    assert json.loads((config / "inputdataconfig.json").read_text()) == {
        "train": {
            "ContentType": "text/csv",
            "TrainingInputMode": "File",
            "S3DistributionType": "ShardedByS3Key",
            "RecordWrapperType": "None",
        },
        "validation": {
            "TrainingInputMode": "FastFile",
            "S3DistributionType": "FullyReplicated",
            "RecordWrapperType": "None",
        },
    }
    assert json.loads((config / "resourceconfig.json").read_text()) == {
        "current_host": "algo-1",
        "current_instance_type": "ml.m5.xlarge",
        "current_group_name": "homogeneousCluster",
        "hosts": ["algo-1", "algo-2"],
        "instance_groups": [
            {
                "instance_group_name": "homogeneousCluster",
                "instance_type": "ml.m5.xlarge",
                "hosts": ["algo-1", "algo-2"],
            }
        ],
        "network_interface_name": "eth0",
    }


def test_sm_variables_paths_and_channels() -> None:
    env = make_env()
    assert env["SM_MODEL_DIR"] == "/opt/ml/model"
    assert env["SM_INPUT_DIR"] == "/opt/ml/input"
    assert env["SM_INPUT_CONFIG_DIR"] == "/opt/ml/input/config"
    assert env["SM_OUTPUT_DIR"] == "/opt/ml/output"
    assert env["SM_OUTPUT_DATA_DIR"] == "/opt/ml/output/data"
    assert env["SM_OUTPUT_INTERMEDIATE_DIR"] == "/opt/ml/output/intermediate"
    assert env["SM_CHANNELS"] == '["train","validation"]'
    assert env["SM_CHANNEL_TRAIN"] == "/opt/ml/input/data/train"
    assert env["SM_CHANNEL_VALIDATION"] == "/opt/ml/input/data/validation"
    assert env["SM_HOSTS"] == '["algo-1","algo-2"]'
    assert env["SM_CURRENT_HOST"] == "algo-2"
    assert env["SM_CURRENT_INSTANCE_TYPE"] == "ml.m5.xlarge"
    assert env["SM_CURRENT_INSTANCE_GROUP"] == "homogeneousCluster"
    assert env["SM_CURRENT_INSTANCE_GROUP_HOSTS"] == '["algo-1","algo-2"]'
    assert env["SM_INSTANCE_GROUPS"] == '["homogeneousCluster"]'
    assert env["SM_IS_HETERO"] == "false"
    assert env["SM_NETWORK_INTERFACE_NAME"] == "eth0"
    assert env["SM_NUM_CPUS"] == "4"
    assert env["SM_NUM_GPUS"] == "0"
    assert env["SM_NUM_NEURONS"] == "0"
    assert env["SM_LOG_LEVEL"] == "20"
    assert env["SM_MODULE_NAME"] == "train"
    assert env["SM_USER_ENTRY_POINT"] == "train.py"
    assert env["SM_MODULE_DIR"] == "s3://bucket/job/source/sourcedir.tar.gz"
    assert env["SM_FRAMEWORK_MODULE"] == ""
    assert "SM_TOPOLOGY" not in env
    assert json.loads(env["SM_INPUT_DATA_CONFIG"])["train"]["S3DistributionType"] == (
        "ShardedByS3Key"
    )
    assert json.loads(env["SM_RESOURCE_CONFIG"])["current_host"] == "algo-2"


def test_sm_hyperparameters_are_decoded_sorted_and_compact() -> None:
    env = make_env()
    assert env["SM_HPS"] == (
        '{"epochs":10,"extra":{"a":1},"layers":[64,32],"learning-rate":0.01,'
        '"optimizer":"adam","plain":"hello"}'
    )
    assert env["SM_HP_EPOCHS"] == "10"
    assert env["SM_HP_LEARNING-RATE"] == "0.01"  # hyphens kept
    assert env["SM_HP_OPTIMIZER"] == "adam"  # strings raw
    assert env["SM_HP_LAYERS"] == "[64,32]"
    assert env["SM_HP_EXTRA"] == '{"a":1}'
    assert env["SM_HP_PLAIN"] == "hello"
    assert not any(name.startswith("SM_HP_SAGEMAKER") for name in env)
    assert json.loads(env["SM_USER_ARGS"]) == contract.user_args(SDK_HYPERPARAMETERS)
    # only the sagemaker_* extras: not program, submit dir, log level, job name, region
    assert env["SM_FRAMEWORK_PARAMS"] == '{"sagemaker_torch_distributed_enabled":false}'


def test_training_env_is_the_whole_environment_as_json() -> None:
    env = make_env()
    training = json.loads(env["SM_TRAINING_ENV"])
    assert training["hyperparameters"]["epochs"] == 10
    assert training["channel_input_dirs"] == {
        "train": "/opt/ml/input/data/train",
        "validation": "/opt/ml/input/data/validation",
    }
    assert training["job_name"] == "job-1"
    assert training["master_hostname"] == "algo-1"
    assert training["is_master"] is False
    assert training["module_name"] == "train"
    assert training["num_cpus"] == 4
    assert set(training) >= {
        "additional_framework_parameters", "current_host", "distribution_hosts",
        "distribution_instance_groups", "framework_module", "hosts", "input_config_dir",
        "input_data_config", "input_dir", "instance_groups", "instance_groups_dict",
        "is_hetero", "log_level", "model_dir", "module_dir", "network_interface_name",
        "num_gpus", "num_neurons", "output_data_dir", "output_dir", "output_intermediate_dir",
        "resource_config", "user_entry_point",
    }  # fmt: skip


def test_platform_and_toolkit_variables() -> None:
    env = make_env(python_path=["/extra/lib"])
    assert env["TRAINING_JOB_NAME"] == "job-1"
    assert env["TRAINING_JOB_ARN"].endswith(":training-job/job-1")
    assert env["SAGEMAKER_JOB_NAME"] == "job-1"
    assert env["CURRENT_HOST"] == "algo-2"
    assert env["SAGEMAKER_REGION"] == "eu-west-1"  # the sagemaker_region hyperparameter
    assert env["AWS_REGION"] == "us-east-1"
    assert env["PYTHONPATH"].split(":") == ["/opt/ml/code", "/extra/lib"]
    assert "SAGEMAKER_BASE_DIR" not in env


def test_torch_distributed_variables_for_several_hosts() -> None:
    env = make_env()
    assert env["MASTER_ADDR"] == "10.0.0.1"  # the first host's address
    assert env["MASTER_PORT"] == "29511"
    assert env["WORLD_SIZE"] == "2"
    assert env["RANK"] == "1"
    single = make_env(
        resource_config=contract.resource_config_json("algo-1", ["algo-1"], "ml.m5.xlarge"),
        host_addresses=None,
    )
    assert single["MASTER_ADDR"] == "algo-1"
    assert "WORLD_SIZE" not in single and "RANK" not in single


def test_distribution_flag_sets_the_distribution_groups() -> None:
    hps = {**SDK_HYPERPARAMETERS, "sagemaker_torch_distributed_enabled": "true"}
    env = make_env(hyperparameters=hps)
    assert env["SM_DISTRIBUTION_INSTANCE_GROUPS"] == '["homogeneousCluster"]'
    training = json.loads(env["SM_TRAINING_ENV"])
    assert training["distribution_hosts"] == ["algo-1", "algo-2"]


def test_unmounted_base_relocates_every_path(tmp_path: Path) -> None:
    env = make_env(base=str(tmp_path))
    assert env["SM_MODEL_DIR"] == str(tmp_path / "model")
    assert env["SM_CHANNEL_TRAIN"] == str(tmp_path / "input" / "data" / "train")
    assert env["PYTHONPATH"] == str(tmp_path / "code")
    assert env["SAGEMAKER_BASE_DIR"] == str(tmp_path)


def test_script_command_by_entry_point_type(tmp_path: Path) -> None:
    py = "/usr/bin/python3"
    assert contract.script_command(tmp_path, "train.py", ["--a", "1"], py) == [
        py, "train.py", "--a", "1"
    ]  # fmt: skip
    assert contract.script_command(tmp_path, "run.sh", ["--a", "x y"], py) == [
        "/bin/sh", "-c", "./run.sh --a 'x y'"
    ]  # fmt: skip
    assert contract.script_command(tmp_path, "train", [], py) == ["/bin/sh", "-c", "./train"]
    (tmp_path / "setup.py").write_text("")
    assert contract.script_command(tmp_path, "train.py", ["--a", "1"], py) == [
        py, "-m", "train", "--a", "1"
    ]  # fmt: skip


def test_script_command_with_torchrun(tmp_path: Path) -> None:
    run = contract.TorchRun(nnodes=2, nproc_per_node=1, master_addr="10.0.0.1",
                            master_port=29500, node_rank=1)  # fmt: skip
    command = contract.script_command(tmp_path, "train.py", ["--e", "1"], "py", run)
    assert command == [
        "py", "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
        "--master_addr", "10.0.0.1", "--master_port", "29500", "--node_rank", "1",
        "train.py", "--e", "1",
    ]  # fmt: skip
    with pytest.raises(ValidationException, match="Python scripts only"):
        contract.script_command(tmp_path, "run.sh", [], "py", run)


def _sourcedir() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in (("train.py", "print('hi')\n"), ("lib/util.py", "X = 1\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_stage_code_from_s3_only_into_an_empty_dir(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    store.create_bucket("bucket")
    store.put_bytes("s3://bucket/job/source/sourcedir.tar.gz", _sourcedir())
    code = tmp_path / "code"
    assert contract.stage_code(store, "s3://bucket/job/source/sourcedir.tar.gz", code)
    assert (code / "train.py").read_text() == "print('hi')\n"
    assert (code / "lib" / "util.py").is_file()
    (code / "train.py").write_text("changed")
    assert not contract.stage_code(store, "s3://bucket/job/source/sourcedir.tar.gz", code)
    assert (code / "train.py").read_text() == "changed"


def test_stage_code_from_local_dir_tarball_and_file_url(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.py").write_text("x")
    assert contract.stage_code(store, str(source), tmp_path / "a")
    assert (tmp_path / "a" / "train.py").read_text() == "x"
    tarball = tmp_path / "sourcedir.tar.gz"
    tarball.write_bytes(_sourcedir())
    assert contract.stage_code(store, tarball.as_uri(), tmp_path / "b")
    assert (tmp_path / "b" / "lib" / "util.py").is_file()
    with pytest.raises(ValidationException, match="does not exist"):
        contract.stage_code(store, str(tmp_path / "missing"), tmp_path / "c")


def test_instance_marker_round_trip(tmp_path: Path) -> None:
    token = contract.write_instance_marker(tmp_path)
    assert contract.read_instance_marker(tmp_path) == token
    assert contract.read_instance_marker(tmp_path / "nowhere") is None


def test_submit_directory_is_decoded() -> None:
    assert contract.submit_directory(SDK_HYPERPARAMETERS) == (
        "s3://bucket/job/source/sourcedir.tar.gz"
    )
    assert contract.submit_directory({"epochs": "1"}) is None


def test_launcher_environment() -> None:
    env = contract.launcher_environment(
        job_name="job-1",
        job_arn="arn:x",
        region="us-east-1",
        host="algo-2",
        hosts=["algo-2", "algo-1"],
        instance_type="ml.m5.large",
        python="/usr/bin/python3",
        vcpus=None,
        addresses={"algo-1": "127.0.0.1", "algo-2": "127.0.0.1"},
        master_port=12345,
        entrypoint=["python3", "x.py"],
        attempt=2,
    )
    assert env[contract.ENV_INSTANCE_HOSTS] == '["algo-1", "algo-2"]'
    assert env[contract.ENV_MASTER_PORT] == "12345"
    assert env[contract.ENV_CONTAINER_ENTRYPOINT] == '["python3", "x.py"]'
    assert env[contract.ENV_ATTEMPT] == "2"
    assert contract.ENV_VCPUS not in env  # None: the launcher counts the host's CPUs
    assert contract.ENV_CONTAINER_ARGUMENTS not in env
    assert all(name.startswith("SALVIA_") for name in env)
