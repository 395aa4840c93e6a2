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

Both are array operations with no Python loop per point or per node: the trees grow together,
one level of nodes at a time, and scoring moves every (point, tree) pair one node down per step.

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
_PAIRS_PER_STEP = 8192  # at most this many (point, tree) pairs are scored together,
_VALUES_PER_STEP = 1 << 20  # and at most this many of their coordinates

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
    """The trees' nodes in flat arrays (a node's children are -1 for a leaf), each tree's nodes
    numbered together, breadth-first, from its root."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.left = arrays["left"]
        self.right = arrays["right"]
        self.dim = arrays["dim"]
        self.cut = arrays["cut"]
        self.count = arrays["count"]
        self.lo = arrays["lo"]
        self.hi = arrays["hi"]
        self.roots = arrays["roots"]
        # what scoring looks up: per node its span (summed ranges), size and whether it is a
        # leaf; and at entry 2v (2v + 1) of the others, for a point going left (right) at node v,
        # the child it goes to and the ratio of the other child's size to that child's plus it
        leaf = self.left < 0
        own = np.arange(len(self.left))
        size = self.count.astype(np.float64)
        self._nodes = np.vstack([(self.hi - self.lo).sum(axis=1), size, leaf])
        left, right = np.where(leaf, own, self.left), np.where(leaf, own, self.right)
        self._child = np.column_stack([left, right]).ravel()
        self._ratio = np.column_stack(
            [size[right] / (size[left] + 1.0), size[left] / (size[right] + 1.0)]
        ).ravel()

    def arrays(self) -> dict[str, np.ndarray]:
        names = ("left", "right", "dim", "cut", "count", "lo", "hi", "roots")
        return {name: getattr(self, name) for name in names}

    @classmethod
    def build(cls, data: np.ndarray, trees: int, samples: int, rng: np.random.Generator) -> Forest:
        """Robust random cut trees over `trees` samples of `samples` rows each."""
        size = min(samples, len(data))
        picks = [rng.choice(len(data), size=size, replace=False) for _ in range(trees)]
        # trees grow together, as many as keep their points within a few megabytes
        group = max(1, _VALUES_PER_STEP // (size * max(data.shape[1], 1)))
        parts = [
            _grow(data[np.concatenate(picks[first : first + group])], size, rng)
            for first in range(0, trees, group)
        ]
        if len(parts) == 1:
            return cls(parts[0])
        offsets = np.cumsum([0] + [len(part["count"]) for part in parts[:-1]])
        merged = {
            name: np.concatenate(
                [
                    np.where(part[name] >= 0, part[name] + offset, -1)
                    for part, offset in zip(parts, offsets, strict=True)
                ]
            )
            for name in ("left", "right", "roots")
        }
        for name in ("dim", "cut", "count", "lo", "hi"):
            merged[name] = np.concatenate([part[name] for part in parts])
        return cls(merged)

    def score(self, points: np.ndarray) -> np.ndarray:
        """The mean over the trees of each point's expected CoDisp."""
        points = np.ascontiguousarray(points, dtype=np.float64)
        trees = len(self.roots)
        total = np.zeros(len(points))
        # (point, tree) pairs go down together, up to `pairs` at a time: many points through
        # one tree (whose nodes stay in cache), or a small request through many trees
        pairs = max(1, min(_PAIRS_PER_STEP, _VALUES_PER_STEP // max(points.shape[1], 1)))
        for start in range(0, len(points), pairs):
            block = points[start : start + pairs]
            per_step = min(trees, max(1, pairs // len(block)))
            for first in range(0, trees, per_step):
                roots = self.roots[first : first + per_step]
                self._add_codisp(block, roots, total[start : start + len(block)])
        return total / trees

    def _add_codisp(self, points: np.ndarray, roots: np.ndarray, total: np.ndarray) -> None:
        """Add to total[i] the expected CoDisp of inserting points[i] into each tree of `roots`.

        Each step moves every pair one node down. At a node, x's new leaf is placed beside it
        with probability `separate` (the part of the box extended by x that lies outside the
        node's box, in summed ranges), a displacement ratio of max(node size, the largest ratio
        among the ancestors so far)."""
        n, width = points.shape
        # per pair: its point and node; the probability that x is not yet separated, the
        # largest ratio among the nodes passed so far, and the expected CoDisp gathered so far
        pairs = np.vstack([np.tile(np.arange(n), len(roots)), np.repeat(roots, n)])
        state = np.zeros((3, pairs.shape[1]))
        state[0] = 1.0
        x = points if len(roots) == 1 else points[pairs[0]]
        ones = np.ones(width)
        while True:
            which, node = pairs
            survive, ancestors, expected = state
            # how far x lies outside the node's box, summed over the dimensions (at most one
            # of lo - x and x - hi is positive)
            below = np.take(self.lo, node, axis=0)
            np.subtract(below, x, out=below)
            above = np.take(self.hi, node, axis=0)
            np.subtract(x, above, out=above)
            np.maximum(below, above, out=below)
            np.maximum(below, 0.0, out=below)
            outside = below @ ones
            span, size, leaf = np.take(self._nodes, node, axis=1)
            extended = outside + span
            separate = np.divide(outside, extended, out=np.zeros(len(node)), where=extended > 0)
            expected += survive * separate * np.maximum(size, ancestors)
            survive *= 1.0 - separate
            ended = leaf > 0
            if ended.any():  # x was placed beside the leaf, or duplicates its point (no ratio)
                done = np.compress(ended, state, axis=1)
                done = done[2] + done[0] * done[1]
                total += np.bincount(np.compress(ended, which), weights=done, minlength=n)
                going = np.flatnonzero(~ended)
                if not going.size:
                    return
                pairs = np.take(pairs, going, axis=1)
                state = np.take(state, going, axis=1)
                x = np.take(x, going, axis=0)
                which, node = pairs
                ancestors = state[1]
            along = np.take(self.dim, node) + width * np.arange(len(node))
            step = 2 * node + 1  # the right child's entry, less one where x goes left
            step -= np.take(x, along) <= np.take(self.cut, node)
            np.maximum(ancestors, np.take(self._ratio, step), out=ancestors)
            pairs[1] = np.take(self._child, step)


def _grow(points: np.ndarray, size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Robust random cut trees over consecutive runs of `size` points, all grown together one
    level of nodes at a time (a few array operations over every tree's points per level); each
    tree's nodes numbered together, breadth-first from its root."""
    trees, width = len(points) // size, points.shape[1]
    capacity = trees * (2 * size - 1)
    left = np.full(capacity, -1, dtype=np.int64)
    right = np.full(capacity, -1, dtype=np.int64)
    dim = np.zeros(capacity, dtype=np.int64)
    cut = np.zeros(capacity)
    count = np.zeros(capacity, dtype=np.int64)
    lo = np.empty((capacity, width))
    hi = np.empty((capacity, width))
    tree = np.empty(capacity, dtype=np.int64)
    # the frontier: new nodes, each holding a run of the rows of `block` (its points)
    block = points
    nodes = np.arange(trees)
    sizes = np.full(trees, size)
    tree[:trees] = nodes
    used = trees
    while nodes.size:
        starts = np.cumsum(sizes) - sizes
        low = np.minimum.reduceat(block, starts, axis=0)
        high = np.maximum.reduceat(block, starts, axis=0)
        lo[nodes], hi[nodes], count[nodes] = low, high, sizes
        ranges = high - low
        total = ranges.sum(axis=1)
        split = total > 0  # a node of one distinct point (or its duplicates) is a leaf
        rows = np.flatnonzero(np.repeat(split, sizes))  # the points of the nodes to split
        nodes, sizes, ranges, low, total = (a[split] for a in (nodes, sizes, ranges, low, total))
        if not nodes.size:
            break
        dims, values, goes_left, taken = _cuts(block[rows], sizes, ranges, low, total, rng)
        dim[nodes], cut[nodes] = dims, values
        children = used + np.arange(2 * len(nodes))
        left[nodes], right[nodes] = children[0::2], children[1::2]
        tree[children] = np.repeat(tree[nodes], 2)
        used += len(children)
        # each node's points, left ones first, become its children's runs
        owner = np.repeat(np.arange(len(nodes)), sizes)
        block = block[rows[np.argsort(2 * owner + ~goes_left, kind="stable")]]
        sizes = np.column_stack([taken, sizes - taken]).ravel()
        nodes = children
    # renumber so that each tree's nodes are contiguous (stable: breadth-first within it)
    arrange = np.argsort(tree[:used], kind="stable")
    rank = np.empty(used, dtype=np.int64)
    rank[arrange] = np.arange(used)

    def renumbered(children: np.ndarray) -> np.ndarray:
        children = children[:used][arrange]
        return np.where(children >= 0, rank[np.maximum(children, 0)], -1)

    return {
        "left": renumbered(left),
        "right": renumbered(right),
        "dim": dim[:used][arrange],
        "cut": cut[:used][arrange],
        "count": count[:used][arrange],
        "lo": lo[:used][arrange],
        "hi": hi[:used][arrange],
        "roots": rank[:trees],
    }


def _cuts(
    block: np.ndarray,
    sizes: np.ndarray,
    ranges: np.ndarray,
    low: np.ndarray,
    total: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A random cut of each node (its points are consecutive runs of the rows of `block`,
    `sizes` long): the dimension drawn in proportion to the box's ranges, the value uniformly
    within the range. A cut that rounding put at the box's edge (one side empty) is drawn again."""
    nodes, width = ranges.shape
    owner = np.repeat(np.arange(nodes), sizes)
    rows = np.arange(len(block))
    cumulative = np.cumsum(ranges, axis=1)
    dims = np.empty(nodes, dtype=np.int64)
    values = np.empty(nodes)
    pending = np.arange(nodes)
    while True:
        r = rng.uniform(0.0, total[pending])
        j = np.minimum((cumulative[pending] <= r[:, None]).sum(axis=1), width - 1)
        dims[pending] = j
        values[pending] = low[pending, j] + (r - (cumulative[pending, j] - ranges[pending, j]))
        goes_left = block[rows, dims[owner]] <= values[owner]
        taken = np.bincount(owner, weights=goes_left, minlength=nodes).astype(np.int64)
        pending = np.flatnonzero((taken == 0) | (taken == sizes))
        if not pending.size:
            return dims, values, goes_left, taken


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
