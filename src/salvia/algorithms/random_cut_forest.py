"""Random Cut Forest: SageMaker's anomaly detector with its hyperparameters, channels, metrics
and response formats, implemented in numpy after Guha et al., "Robust Random Cut Forest Based
Anomaly Detection on Streams" (ICML 2016).

Training: each of `num_trees` trees gets its own uniform sample of `num_samples_per_tree` rows
(what reservoir sampling over the training stream yields) and is a robust random cut tree over
it: a node's cut dimension is drawn with probability proportional to the range of its points'
bounding box in that dimension, the cut value uniformly within that range, recursively until
each leaf holds one distinct point (duplicates share a leaf, which counts them).

Scoring: a point is inserted into each tree as the RRCF insertion does it: at each node on its
way down, with the node's bounding box extended by the point, a random cut falls between the
point and the box with probability (extended ranges - original ranges) / extended ranges; if it
does, the point becomes a leaf beside that node, otherwise it follows the node's own cut. Its
collusive displacement (CoDisp) is the largest ratio, over the ancestors of its new leaf, of the
sibling subtree's size to the size of the subtree holding the point. The score of a tree is the
expectation of that CoDisp over the insertion's random cut, computed exactly along the
(deterministic) path, and the anomaly score is its mean over the trees: about 1 for points
in dense regions, up to `num_samples_per_tree` for isolated ones. Scoring is thus
deterministic for a trained forest.

Unlabeled training data: every CSV column is a feature unless the content type says
`text/csv;label_size=1`. The `test` channel is labeled (the first CSV column, 1 for an anomaly,
0 otherwise, as SageMaker's `text/csv;label_size=1`): a point is called anomalous when its score
exceeds the mean of the training scores plus three standard deviations, and `eval_metrics`
gives `test:accuracy` and (`precision_recall_fscore`) `test:precision`, `test:recall` and
`test:f1` of the anomaly class.

The model artifact is `randomcutforest-model.npz` (not SageMaker's format): the trees' nodes
(children, cut dimension and value, point count and bounding box) in flat arrays and a JSON
`meta`. Memory is O(num_trees x num_samples_per_tree x feature_dim).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from salvia.algorithms import formats
from salvia.algorithms.base import (
    AlgorithmError,
    AlgorithmSpec,
    Param,
    TrainingContext,
    log_metric,
    quality_metric,
    run_training,
)
from salvia.algorithms.features import label_size, load_features, parse_metric_list

MODEL_FILE = "randomcutforest-model.npz"
_SEED = 1
_EVAL_METRICS = ("accuracy", "precision_recall_fscore")
_THRESHOLD_SAMPLE = 5_000  # training rows scored to set the anomaly threshold
_PAIRS_PER_STEP = 1 << 21  # (point, tree) pairs x features handled at once while scoring

_PARAMS = (
    Param("feature_dim", int, low=1, high=10000),
    Param("num_trees", int, 100, low=50, high=1000),
    Param("num_samples_per_tree", int, 256, low=1, high=2048),
    Param("eval_metrics", str, json.dumps(list(_EVAL_METRICS))),
    # the SageMaker Python SDK sends its fixed mini_batch_size of 1000
    Param("mini_batch_size", int, 1000, low=1),
)

SPEC = AlgorithmSpec(
    name="randomcutforest",
    repositories=("randomcutforest",),
    params=_PARAMS,
    train="salvia.algorithms.random_cut_forest:train",
    channels=("train", "test"),
    metrics=(
        quality_metric("test", "f1"),
        quality_metric("test", "accuracy"),
        quality_metric("test", "precision"),
        quality_metric("test", "recall"),
    ),
    inference="salvia.algorithms.random_cut_forest",
)


def train() -> None:
    run_training(SPEC, _train)


class Forest:
    """The trees' nodes in flat arrays (a node's children are -1 for a leaf)."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.left = arrays["left"]
        self.right = arrays["right"]
        self.dim = arrays["dim"]
        self.cut = arrays["cut"]
        self.count = arrays["count"]
        self.lo = arrays["lo"]
        self.hi = arrays["hi"]
        self.roots = arrays["roots"]

    def arrays(self) -> dict[str, np.ndarray]:
        names = ("left", "right", "dim", "cut", "count", "lo", "hi", "roots")
        return {name: getattr(self, name) for name in names}

    @classmethod
    def build(cls, data: np.ndarray, trees: int, samples: int, rng: np.random.Generator) -> Forest:
        size = min(samples, len(data))
        parts = [
            _build_tree(data[rng.choice(len(data), size=size, replace=False)], rng)
            for _ in range(trees)
        ]
        offsets = np.cumsum([0] + [len(p["count"]) for p in parts[:-1]])
        merged: dict[str, np.ndarray] = {}
        for name in ("left", "right"):
            merged[name] = np.concatenate(
                [
                    np.where(p[name] >= 0, p[name] + o, -1)
                    for p, o in zip(parts, offsets, strict=True)
                ]
            )
        for name in ("dim", "cut", "count", "lo", "hi"):
            merged[name] = np.concatenate([p[name] for p in parts])
        merged["roots"] = offsets.astype(np.int64)
        return cls(merged)

    def score(self, points: np.ndarray) -> np.ndarray:
        """The mean over the trees of each point's expected CoDisp."""
        trees = len(self.roots)
        width = max(points.shape[1], 1)
        chunk = max(1, _PAIRS_PER_STEP // (trees * width))
        out = np.empty(len(points))
        for start in range(0, len(points), chunk):
            block = points[start : start + chunk]
            codisp = self._codisp(np.repeat(block, trees, axis=0), np.tile(self.roots, len(block)))
            out[start : start + chunk] = codisp.reshape(len(block), trees).mean(axis=1)
        return out

    def _codisp(self, x: np.ndarray, node: np.ndarray) -> np.ndarray:
        """Expected CoDisp of inserting x[i] into the tree whose root is node[i]."""
        pairs = len(x)
        expected = np.zeros(pairs)
        survive = np.ones(pairs)  # probability that x[i] is not yet separated
        ancestors = np.zeros(pairs)  # largest ratio among the nodes passed so far
        active = np.arange(pairs)
        count = self.count.astype(np.float64)
        while active.size:
            here = node[active]
            point = x[active]
            lo, hi = self.lo[here], self.hi[here]
            span = (hi - lo).sum(axis=1)
            extended = (np.maximum(hi, point) - np.minimum(lo, point)).sum(axis=1)
            separate = np.where(
                extended > 0, (extended - span) / np.where(extended > 0, extended, 1), 0.0
            )
            # separated here: x's new leaf sits beside this node, a ratio of count/1
            expected[active] += (
                survive[active] * separate * np.maximum(count[here], ancestors[active])
            )
            survive[active] *= 1.0 - separate
            leaf = self.left[here] < 0
            done = active[leaf]  # a duplicate of the leaf's point: no further ratio
            expected[done] += survive[done] * ancestors[done]
            active, here, point = active[~leaf], here[~leaf], point[~leaf]
            goes_left = point[np.arange(len(here)), self.dim[here]] <= self.cut[here]
            child = np.where(goes_left, self.left[here], self.right[here])
            sibling = np.where(goes_left, self.right[here], self.left[here])
            ancestors[active] = np.maximum(ancestors[active], count[sibling] / (count[child] + 1.0))
            node[active] = child
        return expected


def _build_tree(points: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One robust random cut tree over `points`, its nodes numbered depth-first."""
    n, width = points.shape
    capacity = 2 * n
    left = np.full(capacity, -1, dtype=np.int64)
    right = np.full(capacity, -1, dtype=np.int64)
    dim = np.zeros(capacity, dtype=np.int64)
    cut = np.zeros(capacity)
    count = np.zeros(capacity, dtype=np.int64)
    lo = np.empty((capacity, width))
    hi = np.empty((capacity, width))
    used = 0
    stack: list[tuple[np.ndarray, int, bool]] = [(np.arange(n), -1, False)]
    while stack:
        index, parent, is_right = stack.pop()
        node, used = used, used + 1
        if parent >= 0:
            (right if is_right else left)[parent] = node
        subset = points[index]
        low, high = subset.min(axis=0), subset.max(axis=0)
        lo[node], hi[node], count[node] = low, high, len(index)
        ranges = high - low
        total = float(ranges.sum())
        if total <= 0:  # one distinct point: a leaf
            continue
        cumulative = np.cumsum(ranges)
        while True:
            r = rng.uniform(0.0, total)
            j = min(int(np.searchsorted(cumulative, r, side="right")), width - 1)
            value = low[j] + (r - (cumulative[j] - ranges[j]))
            goes_left = subset[:, j] <= value
            taken = int(goes_left.sum())
            if 0 < taken < len(index):
                break
        dim[node], cut[node] = j, value
        stack.append((index[~goes_left], node, True))
        stack.append((index[goes_left], node, False))
    return {
        "left": left[:used],
        "right": right[:used],
        "dim": dim[:used],
        "cut": cut[:used],
        "count": count[:used],
        "lo": lo[:used],
        "hi": hi[:used],
    }


def _train(context: TrainingContext, hp: dict[str, Any]) -> None:
    feature_dim = int(hp["feature_dim"])
    metrics = parse_metric_list("eval_metrics", hp["eval_metrics"], _EVAL_METRICS)
    content_type = context.content_types.get("train")
    data = load_features(
        context.channels["train"], content_type, feature_dim, label_size(content_type)
    )
    rng = np.random.default_rng(_SEED)
    forest = Forest.build(data, int(hp["num_trees"]), int(hp["num_samples_per_tree"]), rng)
    sample = data
    if len(data) > _THRESHOLD_SAMPLE:
        sample = data[rng.choice(len(data), size=_THRESHOLD_SAMPLE, replace=False)]
    scores = forest.score(sample)
    threshold = float(scores.mean() + 3.0 * scores.std())
    print(
        f"Built {len(forest.roots)} trees; training scores mean {scores.mean():.6g}, "
        f"std {scores.std():.6g}; anomaly threshold {threshold:.6g}.",
        flush=True,
    )

    if "test" in context.channels:
        test_type = context.content_types.get("test")
        labels = label_size(test_type, 1)
        if labels != 1:
            raise AlgorithmError("The test channel needs labels: text/csv;label_size=1.")
        from salvia.algorithms.data import load

        test = load(context.channels["test"], test_type, labeled=True)
        features = np.asarray(
            test.features.toarray() if hasattr(test.features, "toarray") else test.features,
            dtype=np.float64,
        )
        if features.shape[1] != feature_dim:
            raise AlgorithmError(
                f"Channel test has {features.shape[1]} features but feature_dim is {feature_dim}."
            )
        if test.labels is None:
            raise AlgorithmError("The test channel needs labels (1 anomaly, 0 normal).")
        _log_test_metrics(forest.score(features) > threshold, test.labels != 0, metrics)

    context.model_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "feature_dim": feature_dim,
        "num_trees": int(hp["num_trees"]),
        "num_samples_per_tree": int(hp["num_samples_per_tree"]),
        "threshold": threshold,
    }
    arrays: dict[str, Any] = {"meta": np.array(json.dumps(meta)), **forest.arrays()}
    np.savez(context.model_dir / MODEL_FILE, **arrays)


def _log_test_metrics(predicted: np.ndarray, truth: np.ndarray, metrics: list[str]) -> None:
    if "accuracy" in metrics:
        log_metric("test", "accuracy", float(np.mean(predicted == truth)))
    if "precision_recall_fscore" in metrics:
        hits = float(np.sum(predicted & truth))
        precision = hits / max(float(predicted.sum()), 1.0)
        recall = hits / max(float(truth.sum()), 1.0)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        log_metric("test", "precision", precision)
        log_metric("test", "recall", recall)
        log_metric("test", "f1", f1)


# ---------------------------------------------------------------------------------- inference


def model_fn(model_dir: str | Path) -> dict[str, Any]:
    with np.load(Path(model_dir) / MODEL_FILE) as archive:
        meta = json.loads(str(archive["meta"]))
        forest = Forest({name: archive[name] for name in archive.files if name != "meta"})
    return {**meta, "forest": forest}


def input_fn(body: bytes | str, content_type: str | None) -> np.ndarray:
    return formats.decode_rows(body, content_type)


def predict_fn(data: np.ndarray, model: dict[str, Any]) -> list[dict[str, Any]]:
    rows = np.asarray(data, dtype=np.float64)
    width = int(model["feature_dim"])
    if rows.ndim != 2 or rows.shape[1] != width:
        raise AlgorithmError(f"The model takes {width} features; the request has {rows.shape}.")
    return [{"score": float(s)} for s in model["forest"].score(rows)]


def output_fn(prediction: list[dict[str, Any]], accept: str | None) -> tuple[bytes, str]:
    """`{"scores": [{"score": ...}, ...]}` for JSON (SageMaker's RCF names the list "scores"),
    one `{"score": ...}` per line for JSON Lines, one score per line for CSV."""
    kind = formats._base(accept, formats.JSON)
    if kind == formats.RECORDIO:
        from salvia.algorithms import recordio

        return recordio.encode_predictions(prediction), formats.RECORDIO
    if kind in {"*/*", formats.JSON}:
        return json.dumps({"scores": prediction}).encode(), formats.JSON
    return formats.encode_predictions(prediction, accept, ("score",))
