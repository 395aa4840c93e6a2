"""Image URIs resolved to local runtimes."""

from __future__ import annotations

import importlib.metadata
import platform
import sys

import pytest

from salvia.compute.runtimes import DEFAULT_SPECS, RuntimeRegistry, RuntimeSpec
from salvia.errors import ValidationException

# orjson is one of Salvia's own dependencies, so a runtime built on it is always installed.
INSTALLED = RuntimeSpec("orjsonrt", "orjson", "orjson", "orjsonrt")
MISSING = RuntimeSpec("ghost", "salvia_no_such_module", "salvia-no-such-dist", "ghost")


@pytest.fixture
def registry() -> RuntimeRegistry:
    registry = RuntimeRegistry()
    for repository in ("sagemaker-scikit-learn", "salvia/sklearn"):
        registry.register(repository, INSTALLED)
    registry.register("sagemaker-xgboost", MISSING)
    return registry


@pytest.mark.parametrize(
    ("uri", "repository", "tag", "requested"),
    [
        (
            "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3",
            "sagemaker-scikit-learn",
            "1.2-1-cpu-py3",
            "1.2",
        ),
        (
            "492215442770.dkr.ecr.eu-central-1.amazonaws.com/sagemaker-scikit-learn:0.23-1",
            "sagemaker-scikit-learn",
            "0.23-1",
            "0.23",
        ),
        (
            "450853457545.dkr.ecr.cn-north-1.amazonaws.com.cn/sagemaker-scikit-learn:1.2-1",
            "sagemaker-scikit-learn",
            "1.2-1",
            "1.2",
        ),
        ("salvia/sklearn", "salvia/sklearn", None, None),
        ("salvia/sklearn:latest", "salvia/sklearn", "latest", None),
    ],
)
def test_framework_image_uris_in_any_region(
    registry: RuntimeRegistry, uri: str, repository: str, tag: str | None, requested: str | None
) -> None:
    runtime = registry.resolve(uri)
    assert runtime.name == "orjsonrt"
    assert runtime.python == sys.executable
    assert runtime.module == "orjson"
    assert runtime.version == importlib.metadata.version("orjson")  # what is really installed
    assert runtime.framework is True
    assert (runtime.repository, runtime.tag, runtime.requested_version) == (
        repository,
        tag,
        requested,
    )
    assert runtime.image_uri == uri


def test_python_runtime_needs_nothing() -> None:
    runtime = RuntimeRegistry().resolve("salvia/python:3.11")
    assert runtime.name == "python"
    assert runtime.module is None
    assert runtime.version == platform.python_version()


def test_missing_framework_names_the_extra(registry: RuntimeRegistry) -> None:
    uri = "246618743249.dkr.ecr.us-west-2.amazonaws.com/sagemaker-xgboost:1.7-1"
    with pytest.raises(ValidationException, match=r"pip install 'salvia\[ghost\]'"):
        registry.resolve(uri)


def test_default_table_maps_the_official_repositories() -> None:
    assert DEFAULT_SPECS["sagemaker-scikit-learn"].name == "sklearn"
    assert DEFAULT_SPECS["sagemaker-scikit-learn"].extra == "sklearn"
    assert DEFAULT_SPECS["sagemaker-xgboost"].name == "xgboost"
    assert DEFAULT_SPECS["pytorch-training"].module == "torch"
    assert DEFAULT_SPECS["pytorch-training"].extra == "torch"


@pytest.mark.parametrize(
    "uri",
    [
        "python:3.11",
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/my-own-image:latest",
        "salvia/nope",
        "not a uri",
    ],
)
def test_unknown_images_list_the_known_ones(uri: str) -> None:
    with pytest.raises(ValidationException) as caught:
        RuntimeRegistry().resolve(uri)
    assert "Known images" in caught.value.message
    assert "sagemaker-scikit-learn" in caught.value.message
    assert "salvia/python" in caught.value.message


def test_registering_an_algorithm_image() -> None:
    registry = RuntimeRegistry()
    spec = RuntimeSpec(
        "linear-learner", None, None, None, framework=False, training_module="salvia.x:train"
    )
    registry.register("linear-learner", spec)
    runtime = registry.resolve("382416733822.dkr.ecr.us-east-1.amazonaws.com/linear-learner:1")
    assert runtime.framework is False
    assert runtime.training_module == "salvia.x:train"
    assert runtime.requested_version == "1"
