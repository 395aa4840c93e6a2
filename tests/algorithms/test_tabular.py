"""The tabular algorithms' CSV reader reads what numpy's loadtxt reads, and refuses what it
refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from salvia.algorithms.base import AlgorithmError
from salvia.algorithms.tabular import load_table


def _channel(tmp_path: Path, *texts: str) -> Path:
    channel = tmp_path / "train"
    channel.mkdir(parents=True)
    for index, text in enumerate(texts):
        (channel / f"part-{index}.csv").write_text(text)
    return channel


def test_csv_values_are_loadtxt_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    table = np.column_stack(
        [rng.integers(0, 2, 500), rng.normal(size=(500, 4)) * 10.0 ** rng.integers(-300, 300, 4)]
    )
    rows = "".join(",".join(repr(float(v)) for v in row) + "\n" for row in table)
    special = "# a comment\n1,nan,inf,-inf,NaN\n\n0,1e5,-0.0,Infinity,+nan\n"
    channel = _channel(tmp_path, rows, special)
    x, y = load_table(channel, "text/csv")
    expected = np.vstack([np.loadtxt(p, delimiter=",", ndmin=2) for p in sorted(channel.iterdir())])
    np.testing.assert_array_equal(np.column_stack([y, x]), expected)


@pytest.mark.parametrize(
    "text",
    ["1,2,3\n4,,6\n", "1,2,3\n4,5\n", "1,2\n3,4,5\n", "label,a\n1,2\n", "1,NA,3\n"],
)
def test_csv_that_is_not_a_numeric_table_is_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(AlgorithmError, match="not numeric CSV without a header"):
        load_table(_channel(tmp_path, text), "text/csv")


def test_empty_csv_files_are_skipped(tmp_path: Path) -> None:
    x, y = load_table(_channel(tmp_path, "", "1,2\n0,3\n"), "text/csv")
    assert x.tolist() == [[2.0], [3.0]] and y.tolist() == [1.0, 0.0]
    with pytest.raises(AlgorithmError, match="no rows"):
        load_table(_channel(tmp_path / "empty", ""), "text/csv")
