"""The model server as the endpoint engine runs it: a real process on a free loopback port, over
a model directory laid out as SageMaker extracts `model.tar.gz`, called over HTTP."""

from __future__ import annotations

import http.client
import io
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from salvia.serving import codecs

from ..algorithms.harness import run_training

Iris = tuple[LogisticRegression, np.ndarray]
HEALTHY_WITHIN = 60.0  # a generous bound on start-up, not a measurement


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str]

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> object:
        return json.loads(self.body)


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str = b"",
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            data = body.encode() if isinstance(body, str) else body
            connection.request(
                method, path, body=data if method == "POST" else None, headers=dict(headers or {})
            )
            answer = connection.getresponse()
            return Response(
                answer.status,
                answer.read(),
                answer.getheader("Content-Type", ""),
                {k.lower(): v for k, v in answer.getheaders()},
            )
        finally:
            connection.close()

    def ping(self) -> Response:
        return self.request("GET", "/ping")

    def invoke(
        self,
        body: bytes | str,
        content_type: str | None = None,
        accept: str | None = None,
        **headers: str,
    ) -> Response:
        sent = dict(headers)
        if content_type:
            sent["Content-Type"] = content_type
        if accept:
            sent["Accept"] = accept
        return self.request("POST", "/invocations", body, sent)

    def wait_until_settled(self) -> Response:
        """The first /ping answer that is not 'still loading'."""
        deadline = time.monotonic() + HEALTHY_WITHIN
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                answer = self.ping()
            except OSError:
                time.sleep(0.05)
                continue
            if answer.status != 503:
                return answer
            time.sleep(0.05)
        raise AssertionError(f"The model server did not settle: {self.log.read_text()}")


@contextmanager
def serving(
    model_dir: Path,
    env: Mapping[str, str] | None = None,
    *,
    wait: bool = True,
    args: tuple[str, ...] = (),
) -> Iterator[Server]:
    port = free_port()
    log = model_dir.parent / f"server-{port}.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "SALVIA_"))}
    environ.update(env or {})
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "salvia.serving.model_server",
                "--model-dir",
                str(model_dir),
                "--port",
                str(port),
                *args,
            ],
            env=environ,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = Server(proc, port, log)
    try:
        if wait:
            answer = server.wait_until_settled()
            assert answer.status == 200, answer.text
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_script(model_dir: Path, source: str, name: str = "inference.py") -> None:
    code = model_dir / "code"
    code.mkdir(parents=True, exist_ok=True)
    (code / name).write_text(textwrap.dedent(source))


def csv_rows(rows: np.ndarray) -> str:
    return "".join(",".join(map(repr, map(float, row))) + "\n" for row in rows)


# ------------------------------------------------------------------------------ scikit-learn


@pytest.fixture(scope="module")
def iris_model() -> Iris:
    features, labels = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(features, labels)
    return model, features[::15]


@pytest.fixture(scope="module")
def sklearn_pickle_server(
    tmp_path_factory: pytest.TempPathFactory, iris_model: Iris
) -> Iterator[Server]:
    model_dir = tmp_path_factory.mktemp("sklearn-pickle") / "model"
    model_dir.mkdir()
    (model_dir / "model.pkl").write_bytes(pickle.dumps(iris_model[0]))
    with serving(model_dir, {"SALVIA_FRAMEWORK": "sklearn"}) as server:
        yield server


def test_sklearn_pickle_csv_in_json_out(sklearn_pickle_server: Server, iris_model: Iris) -> None:
    model, rows = iris_model
    answer = sklearn_pickle_server.invoke(csv_rows(rows), "text/csv", "application/json")
    assert answer.status == 200, answer.text
    assert answer.content_type == "application/json"
    assert answer.json() == model.predict(rows.astype(np.float32)).tolist()


def test_sklearn_single_row_and_default_accept(
    sklearn_pickle_server: Server, iris_model: Iris
) -> None:
    model, rows = iris_model
    for accept in (None, "*/*"):
        answer = sklearn_pickle_server.invoke(
            json.dumps(rows[0].tolist()), "application/json", accept
        )
        assert answer.status == 200, answer.text
        assert answer.content_type == "application/json"
        assert answer.json() == model.predict(rows[:1]).tolist()


def test_sklearn_npy_and_jsonlines(sklearn_pickle_server: Server, iris_model: Iris) -> None:
    model, rows = iris_model
    buffer = io.BytesIO()
    np.save(buffer, rows)
    answer = sklearn_pickle_server.invoke(
        buffer.getvalue(), "application/x-npy", "application/x-npy"
    )
    assert answer.status == 200, answer.text
    assert answer.content_type == "application/x-npy"
    assert np.load(io.BytesIO(answer.body)).tolist() == model.predict(rows).tolist()

    lines = "".join(json.dumps(row) + "\n" for row in rows.tolist())
    answer = sklearn_pickle_server.invoke(lines, "application/jsonlines", "application/jsonlines")
    assert answer.status == 200, answer.text
    assert [json.loads(line) for line in answer.text.splitlines()] == model.predict(rows).tolist()


def test_unsupported_content_type_is_a_500_as_in_the_toolkit(sklearn_pickle_server: Server) -> None:
    answer = sklearn_pickle_server.invoke(b"\x00\x01", "image/png")
    assert answer.status == 500
    assert "UnsupportedFormatError" in answer.text
    assert "image/png" in answer.text

    answer = sklearn_pickle_server.invoke("1,2,3,4", "text/csv", "application/xml")
    assert answer.status == 500
    assert "application/xml" in answer.text


def test_payload_over_the_limit_is_refused(sklearn_pickle_server: Server) -> None:
    answer = sklearn_pickle_server.invoke(b"1," * (7 * 1024 * 1024 // 2), "text/csv")
    assert answer.status == 413
    assert "payload limit" in answer.text
    assert sklearn_pickle_server.ping().status == 200


def test_unknown_route(sklearn_pickle_server: Server) -> None:
    assert sklearn_pickle_server.request("GET", "/models").status == 404
    assert sklearn_pickle_server.request("GET", "/invocations").status == 405
    assert sklearn_pickle_server.request("GET", "/execution-parameters").status == 404


def test_sklearn_joblib_json_in_csv_out(tmp_path: Path, iris_model: Iris) -> None:
    model, rows = iris_model
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    joblib.dump(model, model_dir / "model.joblib")
    env = {"SALVIA_FRAMEWORK": "sklearn", "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "text/csv"}
    with serving(model_dir, env) as server:
        answer = server.invoke(json.dumps(rows.tolist()), "application/json")
        assert answer.status == 200, answer.text
        assert answer.content_type == "text/csv"
        assert answer.text.split() == [str(v) for v in model.predict(rows)]


# ------------------------------------------------------------------------------ user scripts


def test_user_script_with_the_four_handlers(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "weights.json").write_text("[2.0, 3.0]")
    (model_dir / "code").mkdir()
    (model_dir / "code" / "helper.py").write_text("OFFSET = 1.0\n")
    write_script(
        model_dir,
        """
        import json, os
        from helper import OFFSET

        def model_fn(model_dir):
            with open(os.path.join(model_dir, "weights.json")) as f:
                return json.load(f)

        def input_fn(body, content_type):
            assert isinstance(body, str), type(body)  # application/json arrives decoded
            return json.loads(body)["x"]

        def predict_fn(data, model):
            return [sum(w * v for w, v in zip(model, row)) + OFFSET for row in data]

        def output_fn(prediction, accept, context):
            context.set_response_header(0, "X-Amzn-SageMaker-Custom-Attributes",
                                        "echo=" + (context.custom_attributes or ""))
            return json.dumps({"y": prediction, "accept": accept}), "application/vnd+y"
    """,
    )
    with serving(model_dir) as server:
        answer = server.invoke(
            '{"x": [[1, 1], [0, 2]]}',
            "application/json",
            **{"X-Amzn-SageMaker-Custom-Attributes": "trace=7"},
        )
        assert answer.status == 200, answer.text
        assert answer.content_type == "application/vnd+y"
        assert answer.json() == {"y": [6.0, 7.0], "accept": "application/json"}
        assert answer.headers["x-amzn-sagemaker-custom-attributes"] == "echo=trace=7"


def test_transform_fn_and_program_from_submit_directory(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    source = tmp_path / "src"
    source.mkdir()
    (source / "serve.py").write_text(
        textwrap.dedent("""
        def model_fn(model_dir):
            return "reversed"

        def transform_fn(model, body, content_type, accept):
            return body[::-1], "text/plain"
    """)
    )
    env = {"SAGEMAKER_PROGRAM": "serve.py", "SAGEMAKER_SUBMIT_DIRECTORY": str(source)}
    with serving(model_dir, env) as server:
        answer = server.invoke(b"abc", "application/octet-stream")
        assert answer.status == 200, answer.text
        assert (answer.body, answer.content_type) == (b"cba", "text/plain")


def test_transform_fn_with_predict_fn_fails_loading_with_the_reason(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    write_script(
        model_dir,
        """
        def model_fn(model_dir):
            return None

        def predict_fn(data, model):
            return data

        def transform_fn(model, body, content_type, accept):
            return body
    """,
    )
    with serving(model_dir, wait=False) as server:
        answer = server.wait_until_settled()
        assert answer.status == 500
        assert "Cannot use transform_fn implementation in conjunction with" in answer.text
        refused = server.invoke("[1]", "application/json")
        assert refused.status == 500
        assert "Cannot use transform_fn" in refused.text
        assert server.proc.poll() is None  # alive, so the platform can read the reason
    assert "Cannot use transform_fn" in server.log.read_text()


def test_missing_program_fails_loading(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    with serving(model_dir, {"SAGEMAKER_PROGRAM": "train.py"}, wait=False) as server:
        answer = server.wait_until_settled()
        assert answer.status == 500
        assert "SAGEMAKER_PROGRAM train.py was not found" in answer.text


def test_handler_error_is_a_500_with_message_and_traceback(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    write_script(
        model_dir,
        """
        def model_fn(model_dir):
            return {}

        def predict_fn(data, model):
            raise ValueError("features missing: colour")
    """,
    )
    with serving(model_dir) as server:
        answer = server.invoke("[[1, 2]]", "application/json")
        assert answer.status == 500
        assert answer.text.startswith("ValueError: features missing: colour")
        assert "Traceback" in answer.text
        assert "in predict_fn" in answer.text
        assert server.invoke("[[1, 2]]", "application/json").status == 500  # still serving


def test_ping_before_and_after_loading_and_during_a_prediction(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    gate = tmp_path / "gate"
    write_script(
        model_dir,
        f"""
        import os, time

        def model_fn(model_dir):
            while not os.path.exists({str(gate)!r}):
                time.sleep(0.02)
            os.remove({str(gate)!r})
            return "ready"

        def predict_fn(data, model):
            while not os.path.exists({str(gate)!r}):
                time.sleep(0.02)
            return [model]
    """,
    )
    with serving(model_dir, wait=False) as server:
        deadline = time.monotonic() + HEALTHY_WITHIN
        while True:  # listening, but the model is held back by the gate
            try:
                loading = server.ping()
                break
            except OSError:
                assert time.monotonic() < deadline, server.log.read_text()
                time.sleep(0.05)
        assert loading.status == 503
        assert server.invoke("[1]", "application/json").status == 503
        gate.touch()
        assert server.wait_until_settled().status == 200

        answers: list[Response] = []
        call = threading.Thread(
            target=lambda: answers.append(server.invoke("[1]", "application/json"))
        )
        call.start()
        try:
            assert server.ping().status == 200  # the prediction waits on the gate meanwhile
            assert call.is_alive()
        finally:
            gate.touch()
            call.join(timeout=30)
        assert answers[0].status == 200, answers[0].text
        assert answers[0].json() == ["ready"]


def test_a_prediction_over_the_timeout_is_answered_504(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    gate = tmp_path / "gate"
    write_script(
        model_dir,
        f"""
        import os, time

        def model_fn(model_dir):
            return None

        def transform_fn(model, body, content_type, accept):
            while not os.path.exists({str(gate)!r}):
                time.sleep(0.02)
            return body
    """,
    )
    with serving(model_dir, {"SAGEMAKER_MODEL_SERVER_TIMEOUT": "0.5"}) as server:
        try:
            answer = server.invoke("x", "text/plain")
        finally:
            gate.touch()
        assert answer.status == 504
        assert "did not answer within 0.5 s" in answer.text
        assert server.invoke("y", "text/plain").body == b"y"


# ------------------------------------------------------------------------ XGBoost, algorithms


@pytest.mark.parametrize("framework", ["xgboost", "algorithm:xgboost"])
def test_xgboost_model(tmp_path: Path, framework: str) -> None:
    xgb = pytest.importorskip("xgboost")
    features, labels = load_iris(return_X_y=True)
    booster = xgb.train(
        {"objective": "multi:softprob", "num_class": 3, "max_depth": 2},
        xgb.DMatrix(features, label=labels),
        num_boost_round=5,
    )
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "xgboost-model").write_bytes(booster.save_raw("ubj"))
    rows = features[::30]
    expected = booster.predict(xgb.DMatrix(rows))
    with serving(model_dir, {"SALVIA_FRAMEWORK": framework}) as server:
        answer = server.invoke(csv_rows(rows), "text/csv")  # the container's default: CSV out
        assert answer.status == 200, answer.text
        assert answer.content_type == "text/csv"
        got = np.array([[float(v) for v in line.split(",")] for line in answer.text.split()])
        np.testing.assert_allclose(got, expected, rtol=1e-6)

        answer = server.invoke(csv_rows(rows[:1]), "text/csv", "application/json")
        assert answer.json() == {"predictions": [{"score": pytest.approx(expected[0].tolist())}]}

        parameters = server.request("GET", "/execution-parameters")
        assert parameters.status == 200
        assert parameters.json()["BatchStrategy"] == "MULTI_RECORD"  # type: ignore[index]


def test_a_users_input_fn_replaces_the_xgboost_default(tmp_path: Path) -> None:
    """The framework's fused transform_fn stands in for its own three handlers only: with a
    user's input_fn (which gets CSV decoded, as the toolkit gives it) that one is called."""
    xgb = pytest.importorskip("xgboost")
    features, labels = load_iris(return_X_y=True)
    booster = xgb.train({"objective": "multi:softprob", "num_class": 3},
                        xgb.DMatrix(features, label=labels), num_boost_round=3)  # fmt: skip
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "xgboost-model").write_bytes(booster.save_raw("ubj"))
    write_script(
        model_dir,
        """
        import numpy as np, xgboost as xgb

        def input_fn(body, content_type):
            assert isinstance(body, str), type(body)
            rows = [[float(v) for v in line.split("|")] for line in body.split()]
            return xgb.DMatrix(np.array(rows))
    """,
    )
    rows = features[::50]
    with serving(model_dir, {"SALVIA_FRAMEWORK": "xgboost"}) as server:
        body = "\n".join("|".join(str(v) for v in row) for row in rows)
        answer = server.invoke(body, "text/csv", "application/json")
        assert answer.status == 200, answer.text
        scores = [p["score"] for p in answer.json()["predictions"]]  # type: ignore[index]
        np.testing.assert_allclose(scores, booster.predict(xgb.DMatrix(rows)), rtol=1e-6)


def test_several_workers_share_the_port_and_a_dead_one_is_replaced(tmp_path: Path) -> None:
    # each call takes long enough that concurrent ones land on both workers
    model_dir = _answers_its_pid(tmp_path, delay=0.05)
    env = {"SAGEMAKER_MODEL_SERVER_WORKERS": "2"}
    with serving(model_dir, env) as server:
        from concurrent.futures import ThreadPoolExecutor

        def answering_pids() -> set[int]:
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda _: server.invoke("x", "text/plain"), range(16)))
            assert all(a.status == 200 for a in answers), [a.text for a in answers]
            return {int(a.text) for a in answers}

        workers = answering_pids()
        assert len(workers) == 2
        parent = server.proc.pid
        assert all(_parent_of(pid) == parent for pid in workers)  # forked by the server

        os.kill(next(iter(workers)), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = answering_pids()
            if len(now) == 2 and now != workers:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"no replacement worker: {server.log.read_text()}")
        survivors = now
    for pid in survivors:  # terminating the server ended its workers
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)


def test_each_worker_also_answers_on_a_port_of_its_own(tmp_path: Path) -> None:
    model_dir = _answers_its_pid(tmp_path)
    own = [free_port(), free_port()]
    env = {"SAGEMAKER_MODEL_SERVER_WORKERS": "2"}
    with serving(model_dir, env, args=("--worker-ports", ",".join(map(str, own)))) as server:
        answered = []
        for port in own:
            by_port = Server(server.proc, port, server.log)
            pids = {by_port.invoke("x", "text/plain").text for _ in range(5)}
            assert len(pids) == 1  # always the same worker on its own port
            answered.append(pids.pop())
        assert len(set(answered)) == 2  # and a different one on each
        assert server.invoke("x", "text/plain").text in answered  # the shared port too


def _answers_its_pid(tmp_path: Path, delay: float = 0.0) -> Path:
    """A model whose every answer is the id of the worker process that served it."""
    model_dir = tmp_path / "model"
    write_script(
        model_dir,
        f"""
        import os, time

        def model_fn(model_dir):
            return os.getpid()

        def transform_fn(model, body, content_type, accept):
            time.sleep({delay})
            return str(model), "text/plain"
        """,
    )
    return model_dir


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_builtin_kmeans_model(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [10.0, 10.0]])
    data = np.concatenate([c + rng.normal(size=(100, 2)) for c in centers])
    run = run_training(
        "salvia.algorithms.kmeans",
        tmp_path / "job",
        {"k": 2, "feature_dim": 2, "mini_batch_size": 50},
        {"train": {"train.csv": csv_rows(data)}},
        {"train": "text/csv"},
    )
    assert run.returncode == 0, run.log
    with serving(run.model_dir, {"SALVIA_FRAMEWORK": "algorithm:kmeans"}) as server:
        answer = server.invoke("0.1,0.2\n9.8,10.1\n", "text/csv", "application/json")
        assert answer.status == 200, answer.text
        predictions = answer.json()["predictions"]  # type: ignore[index]
        assert len(predictions) == 2
        assert predictions[0]["closest_cluster"] != predictions[1]["closest_cluster"]
        assert predictions[0]["distance_to_cluster"] < 3


def test_unknown_framework_fails_loading(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    with serving(model_dir, {"SALVIA_FRAMEWORK": "algorithm:nope"}, wait=False) as server:
        answer = server.wait_until_settled()
        assert answer.status == 500
        assert "unknown algorithm 'nope'" in answer.text


# ----------------------------------------------------------------------------------- PyTorch


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_pytorch_torchscript_model(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    linear = torch.nn.Linear(3, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]))
        linear.bias.zero_()
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    torch.jit.script(linear).save(str(model_dir / "model.pth"))
    with serving(model_dir, {"SALVIA_FRAMEWORK": "pytorch"}) as server:
        answer = server.invoke("[[1, 2, 3], [4, 5, 6]]", "application/json")
        assert answer.status == 200, answer.text
        assert answer.json() == [[1.0, 5.0], [4.0, 11.0]]
        answer = server.invoke("1,2,3\n4,5,6\n", "text/csv", "text/csv")
        assert answer.text.split() == ["1.0,5.0", "4.0,11.0"]


# ----------------------------------------------------------------------- the codecs in-process


def test_codecs_follow_the_toolkit() -> None:
    assert codecs.decode("1,2,3", "text/csv").tolist() == [1.0, 2.0, 3.0]
    assert codecs.decode("1,2\n3,4\n", "text/csv").tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert np.isnan(codecs.decode("1,,3", "text/csv")[1])
    assert codecs.decode(b"[[1, 2]]", "application/json; charset=utf-8").tolist() == [[1, 2]]
    assert codecs.encode(np.array([0.5, 1.5]), "text/csv") == (b"0.5\n1.5\n", "text/csv")
    assert codecs.encode(np.array([[1, 2]]), "application/xml, text/csv") == (b"1,2\n", "text/csv")
    assert codecs.encode(np.float32([0.1]), "application/json")[0] == b"[0.10000000149011612]"
    with pytest.raises(codecs.UnsupportedFormatError):
        codecs.encode([1], "application/xml")
