"""The inference handlers of one model, resolved as SageMaker's inference toolkit resolves them
(sagemaker_inference `transformer.py`): the user's script (`<model_dir>/code/inference.py`, or
`SAGEMAKER_PROGRAM` in `SAGEMAKER_SUBMIT_DIRECTORY`) overrides, function by function, the
defaults of the framework named by `SALVIA_FRAMEWORK`:

- `python` (or unset): the toolkit's own defaults; `model_fn` and `predict_fn` must come from the
  user, `input_fn`/`output_fn` decode and encode JSON, CSV, NPY (and JSON Lines).
- `sklearn`: loads `model.joblib` (or `model.pkl`/`model.pickle`) and calls `model.predict`.
- `xgboost`: the built-in XGBoost algorithm's handlers (`xgboost-model`), as the XGBoost
  container serves a model without a user module.
- `pytorch`: the PyTorch toolkit's defaults (TorchScript `model.pt` or the only `*.pt`/`*.pth`).
- `algorithm:<name>`: a built-in algorithm's handlers.

`code/requirements.txt` is not installed: the model server runs on Salvia's interpreter.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import os
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from salvia.serving import codecs

DEFAULT_PROGRAM = "inference.py"
CONTAINER_CODE_DIR = "/opt/ml/model/code"
_HANDLER_NAMES = ("model_fn", "input_fn", "predict_fn", "output_fn", "transform_fn",
                  "pre_model_fn", "model_warmup_fn", "execution_parameters_fn")  # fmt: skip


class HandlerError(Exception):
    """The handlers cannot be resolved: a missing script, an unknown framework."""


class Context:
    """The request context handed to handlers that take a trailing `context` argument, shaped
    like the model server's (MMS/TorchServe) context: `system_properties`,
    `get_request_header(0, name)`, `set_response_header(0, name, value)`."""

    def __init__(self, model_dir: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self.model_name = "model"
        self.system_properties: dict[str, Any] = {
            "model_dir": model_dir, "gpu_id": None, "batch_size": 1, "server_name": "salvia",
        }  # fmt: skip
        self.request_headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                                for k, v in headers}  # fmt: skip
        self.response_headers: dict[str, str] = {}

    @property
    def custom_attributes(self) -> str | None:
        return self.request_headers.get("x-amzn-sagemaker-custom-attributes")

    def get_request_header(self, idx: int, key: str) -> str | None:
        return self.request_headers.get(key.lower())

    def get_all_request_header(self, idx: int) -> dict[str, str]:
        return dict(self.request_headers)

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self.response_headers[key] = value

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.response_headers["Content-Type"] = value


@dataclass(frozen=True)
class HandlerSet:
    """The functions serving one model; `raw_accept` leaves a missing or `*/*` Accept to
    `output_fn` (the built-in algorithms choose their own default); `raw_body` hands `input_fn`
    the request's bytes as they came, CSV and JSON too (the built-in algorithms' servers do not
    decode them; for a batch transform's megabytes of CSV, a decoded `str` costs a UCS-4 copy
    and an encoding back to parse it)."""

    model_fn: Callable[..., Any]
    input_fn: Callable[..., Any]
    predict_fn: Callable[..., Any]
    output_fn: Callable[..., Any]
    transform_fn: Callable[..., Any] | None = None
    pre_model_fn: Callable[..., Any] | None = None
    model_warmup_fn: Callable[..., Any] | None = None
    execution_parameters_fn: Callable[..., Any] | None = None
    raw_accept: bool = False
    raw_body: bool = False
    source: str = "defaults"


# --------------------------------------------------------------------------- framework defaults


def _no_model_fn(model_dir: str) -> Any:
    raise NotImplementedError(
        "Please provide a model_fn implementation in code/inference.py "
        "(or set SALVIA_FRAMEWORK to a framework with a default model_fn)."
    )


def _no_predict_fn(data: Any, model: Any) -> Any:
    raise NotImplementedError("Please provide a predict_fn implementation in code/inference.py.")


def _sklearn_model_fn(model_dir: str) -> Any:
    import joblib

    for name in ("model.joblib", "model.pkl", "model.pickle"):
        path = Path(model_dir) / name
        if path.is_file():
            return joblib.load(path)  # joblib also reads plain pickles
    raise FileNotFoundError(
        f"No model.joblib, model.pkl or model.pickle in {model_dir}; "
        "save the model under one of these names or provide a model_fn."
    )


def _sklearn_input_fn(body: bytes | str, content_type: str) -> Any:
    array = codecs.decode(body, content_type)
    if content_type in codecs.UTF8_TYPES:  # the scikit-learn container's cast
        try:
            return array.astype(np.float32)
        except (TypeError, ValueError):
            return array
    return array


def _sklearn_predict_fn(data: Any, model: Any) -> Any:
    if isinstance(data, np.ndarray) and data.ndim < 2:
        data = data.reshape(1, -1)  # one CSV line (even of one value) or JSON row: one record
    return model.predict(data)


def _pytorch_model_fn(model_dir: str) -> Any:
    import torch

    directory = Path(model_dir)
    path = directory / "model.pt"
    if not path.exists():
        found = sorted(p for p in directory.iterdir() if p.suffix in (".pt", ".pth"))
        if len(found) != 1:
            names = [p.name for p in found]
            raise ValueError(
                f"Exactly one .pth or .pt file is required for PyTorch models: {names}"
            )
        path = found[0]
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as error:
        raise RuntimeError(
            f"Failed to load {path.name}. Please ensure model is saved using torchscript."
        ) from error
    model.eval()
    return model


def _pytorch_input_fn(body: bytes | str, content_type: str) -> Any:
    import torch

    array = codecs.decode(body, content_type)
    if content_type in codecs.UTF8_TYPES:
        return torch.FloatTensor(array)
    return torch.from_numpy(np.asarray(array))


def _pytorch_predict_fn(data: Any, model: Any) -> Any:
    import torch

    with torch.no_grad():
        return model(data)


def _pytorch_output_fn(prediction: Any, accept: str) -> tuple[bytes, str]:
    import torch

    if isinstance(prediction, torch.Tensor):
        prediction = prediction.detach().cpu().numpy().tolist()
    return codecs.encode(prediction, accept)


def _xgboost_execution_parameters() -> dict[str, Any]:
    """The XGBoost container's `GET /execution-parameters` (serve.py)."""
    return {"MaxConcurrentTransforms": os.cpu_count() or 1, "BatchStrategy": "MULTI_RECORD",
            "MaxPayloadInMB": 6}  # fmt: skip


def _generic() -> HandlerSet:
    return HandlerSet(_no_model_fn, codecs.decode, _no_predict_fn, codecs.encode)


def _from_module(module: ModuleType, raw_accept: bool) -> HandlerSet:
    """A built-in algorithm's handlers, which take the request as it came."""
    functions = {name: getattr(module, name) for name in _HANDLER_NAMES if hasattr(module, name)}
    return HandlerSet(**functions, raw_accept=raw_accept, raw_body=True, source=module.__name__)


def framework_defaults(framework: str) -> HandlerSet:
    """The default handlers for a `SALVIA_FRAMEWORK` value."""
    name = framework.strip().lower()
    if name in ("", "python"):
        return _generic()
    if name == "sklearn":
        return HandlerSet(_sklearn_model_fn, _sklearn_input_fn, _sklearn_predict_fn,
                          codecs.encode, source="sklearn")  # fmt: skip
    if name == "pytorch":
        return HandlerSet(_pytorch_model_fn, _pytorch_input_fn, _pytorch_predict_fn,
                          _pytorch_output_fn, source="pytorch")  # fmt: skip
    if name == "xgboost":
        module = importlib.import_module("salvia.algorithms.xgboost_inference")
        handlers = _from_module(module, raw_accept=True)
        return replace(handlers, execution_parameters_fn=_xgboost_execution_parameters)
    if name.startswith("algorithm:"):
        from salvia.algorithms.registry import ALGORITHMS

        algorithm = name.split(":", 1)[1]
        if algorithm not in ALGORITHMS:
            known = ", ".join(sorted(ALGORITHMS))
            raise HandlerError(
                f"SALVIA_FRAMEWORK: unknown algorithm '{algorithm}'; known: {known}."
            )
        handlers = _from_module(importlib.import_module(ALGORITHMS[algorithm]), raw_accept=True)
        if algorithm == "xgboost" and handlers.execution_parameters_fn is None:
            handlers = replace(handlers, execution_parameters_fn=_xgboost_execution_parameters)
        return handlers
    raise HandlerError(
        f"SALVIA_FRAMEWORK: '{framework}' is not one of python, sklearn, xgboost, pytorch, "
        "algorithm:<name>."
    )


# What loading a framework's model imports. A model server with several workers imports these
# once and forks its workers after (as SageMaker's XGBoost image, whose gunicorn forks workers
# from a master that imported xgboost), so that each worker is serving within milliseconds
# instead of importing them anew (xgboost brings scikit-learn, SciPy and pandas: ~1.5 s).
_FRAMEWORK_LIBRARIES = {
    "sklearn": ("sklearn", "joblib"),
    "xgboost": ("xgboost", "salvia.algorithms.xgboost_inference"),
    "pytorch": ("torch",),
}
_ALGORITHM_LIBRARIES = {"xgboost": "xgboost", "lightgbm": "lightgbm", "catboost": "catboost"}


def preload(framework: str) -> None:
    """Import what `framework`'s model loading needs, where it is installed (a worker that then
    fails to load its model reports why on /ping, as it would have without this)."""
    name = framework.strip().lower()
    modules = list(_FRAMEWORK_LIBRARIES.get(name, ()))
    if name.startswith("algorithm:"):
        from salvia.algorithms.registry import ALGORITHMS

        algorithm = name.split(":", 1)[1]
        modules += [ALGORITHMS.get(algorithm, ""), _ALGORITHM_LIBRARIES.get(algorithm, "")]
    for module in filter(None, modules):
        with contextlib.suppress(ImportError):
            importlib.import_module(module)


# ----------------------------------------------------------------------------------- user code


def code_dir(model_dir: Path, environ: Mapping[str, str]) -> Path:
    """Where the user's script lives: SAGEMAKER_SUBMIT_DIRECTORY as a local directory (or a
    local `sourcedir.tar.gz`, extracted), `/opt/ml/model/code` meaning `<model_dir>/code`."""
    submit = environ.get("SAGEMAKER_SUBMIT_DIRECTORY", "").strip()
    submit = submit.removeprefix("file://")
    if not submit or submit.rstrip("/") == CONTAINER_CODE_DIR:
        return model_dir / "code"
    if submit.startswith("/opt/ml/model/"):
        return model_dir / submit.removeprefix("/opt/ml/model/")
    if "://" in submit:
        raise HandlerError(
            f"SAGEMAKER_SUBMIT_DIRECTORY {submit} is not a local directory; the platform must "
            "fetch and extract it before starting the model server."
        )
    path = Path(submit)
    if path.is_file() and tarfile.is_tarfile(path):
        target = Path(tempfile.mkdtemp(prefix="salvia-code-"))
        with tarfile.open(path) as archive:
            archive.extractall(target, filter="data")
        return target
    return path


def load_user_module(model_dir: Path, environ: Mapping[str, str]) -> ModuleType | None:
    """Import the user's inference script, or None when there is none."""
    program = environ.get("SAGEMAKER_PROGRAM", "").strip()
    directory = code_dir(model_dir, environ)
    script = directory / (program or DEFAULT_PROGRAM)
    if not script.is_file():
        if program:
            raise HandlerError(f"SAGEMAKER_PROGRAM {program} was not found in {directory}.")
        return None
    if (directory / "requirements.txt").is_file():
        print(
            f"Note: {directory / 'requirements.txt'} is not installed by Salvia's model server; "
            "the packages must already be in the runtime.",
            file=sys.stderr,
        )
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))  # the script may import its neighbours
    name = script.stem
    spec = importlib.util.spec_from_file_location(name, script)
    if spec is None or spec.loader is None:
        raise HandlerError(f"Cannot import {script}.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def resolve(model_dir: Path, environ: Mapping[str, str]) -> HandlerSet:
    """The handlers for the model in `model_dir`: the user's functions over the framework's."""
    handlers = framework_defaults(environ.get("SALVIA_FRAMEWORK", ""))
    module = load_user_module(model_dir, environ)
    if module is None:
        return handlers
    user = {name: getattr(module, name) for name in _HANDLER_NAMES if hasattr(module, name)}
    if "transform_fn" in user and {"input_fn", "predict_fn", "output_fn"} & user.keys():
        raise ValueError(
            "Cannot use transform_fn implementation in conjunction with input_fn, predict_fn, "
            "and/or output_fn implementation"
        )
    if {"input_fn", "predict_fn", "output_fn"} & user.keys():
        # a framework's transform_fn only fuses its own three; the user's must be called
        handlers = replace(handlers, transform_fn=None)
    # A user output_fn (or transform_fn) gets the toolkit's default Accept substituted.
    raw_accept = handlers.raw_accept and not ({"output_fn", "transform_fn"} & user.keys())
    raw_body = handlers.raw_body and not ({"input_fn", "transform_fn"} & user.keys())
    return replace(handlers, **user, raw_accept=raw_accept, raw_body=raw_body,
                   source=str(module.__file__))  # fmt: skip


# --------------------------------------------------------------------------------- the calling


@dataclass(frozen=True)
class _Bound:
    """A handler with its arity checked once: whether it takes the trailing context."""

    fn: Callable[..., Any]
    takes_context: bool

    @classmethod
    def of(cls, fn: Callable[..., Any], name: str, arity: int) -> _Bound:
        try:
            parameters = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):  # builtins without a signature
            return cls(fn, False)
        if any(p.kind is p.VAR_POSITIONAL for p in parameters):
            return cls(fn, False)
        required = [p for p in parameters if p.default is p.empty and p.kind in
                    (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]  # fmt: skip
        positional = [
            p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if len(positional) == arity + 1 and len(required) <= arity + 1:
            return cls(fn, True)
        if len(required) <= arity <= len(positional):
            return cls(fn, False)
        raise TypeError(f"{name} takes {len(positional)} arguments but {arity} were given.")

    def __call__(self, context: Context | None, *args: Any) -> Any:
        if self.takes_context:
            return self.fn(*args, context)
        return self.fn(*args)


@dataclass
class Transformer:
    """Loads the model once and turns requests into responses with the resolved handlers.

    `invoke` may be called from several threads at once only if the user's handlers allow it;
    the model server calls it from one thread per process, as SageMaker's servers do."""

    handlers: HandlerSet
    model_dir: str
    default_accept: str = codecs.JSON
    model: Any = None
    _fns: dict[str, _Bound] = field(default_factory=dict)
    needs_context: bool = False

    def load(self) -> None:
        h = self.handlers
        fns = {"model_fn": _Bound.of(h.model_fn, "model_fn", 1)}
        if h.transform_fn is not None:
            fns["transform_fn"] = _Bound.of(h.transform_fn, "transform_fn", 4)
        else:
            fns["input_fn"] = _Bound.of(h.input_fn, "input_fn", 2)
            fns["predict_fn"] = _Bound.of(h.predict_fn, "predict_fn", 2)
            fns["output_fn"] = _Bound.of(h.output_fn, "output_fn", 2)
        self._fns = fns
        self.needs_context = any(f.takes_context for f in fns.values())
        context = Context(self.model_dir)
        if h.pre_model_fn is not None:
            _Bound.of(h.pre_model_fn, "pre_model_fn", 1)(context, self.model_dir)
        self.model = fns["model_fn"](context, self.model_dir)
        if h.model_warmup_fn is not None:
            _Bound.of(h.model_warmup_fn, "model_warmup_fn", 2)(context, self.model_dir, self.model)

    def invoke(
        self,
        body: bytes,
        content_type: str | None,
        accept: str | None,
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> tuple[bytes | Iterator[bytes], str, dict[str, str]]:
        """The response body (or, from handlers that yield, its parts), its content type and any
        headers the handlers set."""
        if not self.handlers.raw_accept and (not accept or accept == codecs.ANY):
            accept = self.default_accept
        data: bytes | str = body
        if content_type in codecs.UTF8_TYPES and not self.handlers.raw_body:
            data = body.decode("utf-8")
        context = Context(self.model_dir, headers) if self.needs_context else None
        fns = self._fns
        transform = fns.get("transform_fn")
        if transform is not None:
            result = transform(context, self.model, data, content_type, accept)
        else:
            decoded = fns["input_fn"](context, data, content_type)
            prediction = fns["predict_fn"](context, decoded, self.model)
            result = fns["output_fn"](context, prediction, accept)
        response_type = accept or self.default_accept
        if isinstance(result, tuple):
            result, response_type = result[0], result[1]
        extra = context.response_headers if context is not None else {}
        if "Content-Type" in extra:
            response_type = extra.pop("Content-Type")
        if isinstance(result, Iterator):  # a handler that yields: the server streams the parts
            return (_as_bytes(part) for part in result), str(response_type), extra
        return _as_bytes(result), str(response_type), extra

    def execution_parameters(self) -> Any:
        fn = self.handlers.execution_parameters_fn
        return None if fn is None else fn()


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], bytes | str):
        return _as_bytes(value[0])  # a handler written for MMS's batch-of-one lists
    return codecs.to_json(value)
