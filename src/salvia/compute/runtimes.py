"""The runtime ("image") registry: which local Python environment runs a job whose request names
a container image.

Salvia runs no containers. A training image URI is mapped to a *runtime*: the server's own
interpreter (`sys.executable`) with one framework importable, installed from one of Salvia's
extras (`salvia[sklearn]`, `salvia[xgboost]`, `salvia[torch]`). The table is data: one row per
image repository name, so that later work (the built-in algorithms: `linear-learner`, `kmeans`,
...) adds rows rather than code.

Recognized image URIs:
- SageMaker's official framework images in any account and region,
  `<account>.dkr.ecr.<region>.amazonaws.com[.cn]/<repository>[:<tag>|@sha256:<digest>]`,
  e.g. `.../sagemaker-scikit-learn:1.2-1-cpu-py3`, `.../sagemaker-xgboost:1.7-1`,
  `.../pytorch-training:2.1-cpu-py310`;
- Salvia's short names `salvia/<runtime>[:<tag>]`, e.g. `salvia/sklearn`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, replace

from salvia.errors import ValidationException

__all__ = [
    "DEFAULT_SPECS",
    "Runtime",
    "RuntimeRegistry",
    "RuntimeSpec",
]

# <account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]/<repository>[:tag][@digest]
_ECR_URI = re.compile(
    r"(?P<account>\d{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?"
    r"/(?P<repository>[a-z0-9][a-z0-9._/-]*?)(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@sha256:[0-9a-f]{64})?"
)
_ECR_HOST = "<account>.dkr.ecr.<region>.amazonaws.com"
_SHORT_NAME = re.compile(r"salvia/(?P<name>[a-z0-9][a-z0-9._-]*)(?::(?P<tag>[\w][\w.-]{0,127}))?")


@dataclass(frozen=True)
class RuntimeSpec:
    """One row of the table: what a runtime needs and where it comes from."""

    name: str  # "python", "sklearn", "xgboost", "pytorch"
    module: str | None  # the module that must be importable; None for plain Python
    distribution: str | None  # the installed distribution whose version is reported
    extra: str | None  # the Salvia extra that installs it: `pip install salvia[<extra>]`
    framework: bool = True  # script mode (runs `sagemaker_program`); False for algorithm images
    training_module: str | None = None  # `pkg.mod:main` run when no script is given


@dataclass(frozen=True)
class Runtime:
    """A resolved runtime: the interpreter to run and what it really provides."""

    name: str
    python: str  # the interpreter's path
    module: str | None
    version: str  # the framework version really installed (Python's for "python")
    framework: bool  # True: a framework image, which runs a user script (script mode)
    image_uri: str  # as the request named it
    repository: str  # "sagemaker-xgboost", or "salvia/xgboost" for a short name
    tag: str | None  # the image tag, e.g. "1.7-1"
    requested_version: str | None  # the framework version the tag asks for, e.g. "1.7"
    training_module: str | None = None


DEFAULT_SPECS: dict[str, RuntimeSpec] = {
    # Official SageMaker framework image repositories.
    "sagemaker-scikit-learn": RuntimeSpec("sklearn", "sklearn", "scikit-learn", "sklearn"),
    # In algorithm mode (no sagemaker_program) this image is the built-in XGBoost algorithm;
    # the training engine decides which mode a job is in.
    "sagemaker-xgboost": RuntimeSpec("xgboost", "xgboost", "xgboost", "xgboost"),
    "pytorch-training": RuntimeSpec("pytorch", "torch", "torch", "torch"),
    "sagemaker-pytorch": RuntimeSpec("pytorch", "torch", "torch", "torch"),  # pre-1.2 images
    # Salvia's short names (`salvia/<name>`).
    "salvia/python": RuntimeSpec("python", None, None, None),
    "salvia/sklearn": RuntimeSpec("sklearn", "sklearn", "scikit-learn", "sklearn"),
    "salvia/xgboost": RuntimeSpec("xgboost", "xgboost", "xgboost", "xgboost"),
    "salvia/pytorch": RuntimeSpec("pytorch", "torch", "torch", "torch"),
}


class RuntimeRegistry:
    """Maps image URIs to runtimes through a table of repository name -> `RuntimeSpec`.

    Resolution checks, without importing it, that the runtime's framework is installed in the
    interpreter the runtime will use; it is cheap and thread-safe (the table is read-only after
    construction, `register` aside, which is meant for start-up).
    """

    def __init__(self, specs: dict[str, RuntimeSpec] | None = None) -> None:
        self._specs = dict(DEFAULT_SPECS if specs is None else specs)
        # Runtimes run on the server's own interpreter, so this process can tell what they hold.
        self.python = sys.executable

    def register(self, repository: str, spec: RuntimeSpec) -> None:
        """Add or replace a row, e.g. `register("linear-learner", RuntimeSpec(...))`."""
        self._specs[repository] = spec

    def known_images(self) -> list[str]:
        """The repository names and short names this registry recognizes, sorted."""
        return sorted(
            name
            if name.startswith("salvia/")
            else f"<account>.dkr.ecr.<region>.amazonaws.com/{name}"
            for name in self._specs
        )

    def resolve(self, image_uri: str) -> Runtime:
        """The runtime for `image_uri`; ValidationException for an unknown image or a runtime
        whose framework is not installed."""
        repository, tag = _split(image_uri)
        spec = self._specs.get(repository) if repository else None
        if spec is None:
            raise ValidationException(
                f"Image {image_uri!r} is not an image Salvia can run. Known images: "
                + ", ".join(self.known_images())
            )
        return replace(
            self._materialize(spec, image_uri),
            repository=repository or "",
            tag=tag,
            requested_version=_tag_version(tag),
        )

    def runtimes(self) -> Iterable[RuntimeSpec]:
        return self._specs.values()

    def _materialize(self, spec: RuntimeSpec, image_uri: str) -> Runtime:
        version: str | None = platform.python_version()
        if spec.module is not None:
            version = _installed_version(spec.module, spec.distribution)
            if version is None:
                extra = f"`pip install 'salvia[{spec.extra}]'`" if spec.extra else "its package"
                raise ValidationException(
                    f"Image {image_uri!r} needs the {spec.name} runtime, whose module "
                    f"{spec.module!r} is not installed on this Salvia server; install {extra}."
                )
        return Runtime(
            name=spec.name,
            python=self.python,
            module=spec.module,
            version=version or "unknown",
            framework=spec.framework,
            image_uri=image_uri,
            repository="",
            tag=None,
            requested_version=None,
            training_module=spec.training_module,
        )


def _split(image_uri: str) -> tuple[str | None, str | None]:
    """(repository, tag) of an ECR URI or a `salvia/` short name; (None, None) otherwise."""
    uri = image_uri.strip()
    if match := _ECR_URI.fullmatch(uri):
        return match["repository"], match["tag"]
    if match := _SHORT_NAME.fullmatch(uri):
        return f"salvia/{match['name']}", match["tag"]
    return None, None


def _tag_version(tag: str | None) -> str | None:
    """The framework version a tag asks for: "1.2-1-cpu-py3" -> "1.2", "2.1-cpu-py310" -> "2.1"."""
    if not tag:
        return None
    match = re.match(r"\d+(?:\.\d+)*", tag)
    return match.group(0) if match else None


def _installed_version(module: str, distribution: str | None) -> str | None:
    """The installed version, found without importing the module (torch takes seconds)."""
    try:
        if importlib.util.find_spec(module) is None:
            return None
    except (ImportError, ValueError):
        return None
    if distribution:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            pass
    return "unknown"
