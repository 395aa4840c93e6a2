"""The shared request/response formats of the built-in algorithms."""

from __future__ import annotations

import numpy as np
import pytest

from salvia.algorithms.formats import float_lines


def python_lines(values: np.ndarray) -> bytes:
    """What SageMaker's XGBoost container writes for a batch: `str` of each value."""
    return ("\n".join(map(str, np.asarray(values).ravel().tolist())) + "\n").encode()


RNG = np.random.default_rng(7)
EDGES = [0.0, -0.0, 1e-4, 9.99e-5, 1e-5, -1e-5, 1e15, 1e16, 123456789012345.6, 5e-324]
EDGES += [999999999.9999999, 1e22, 1.7976931348623157e308, 2.2250738585072014e-308]
EDGES += [10.00001, 100.000012, 0.00001, -0.00002]
CASES = {
    # all but the last three are past PYTHON_LINES_BELOW: the vectorized rewrite is exercised
    "probabilities": RNG.random(50_000).astype(np.float32),
    "saturated sigmoid": (1 / (1 + np.exp(-RNG.normal(size=50_000) * 12))).astype(np.float32),
    "every float32 decade": (
        RNG.normal(size=50_000) * 10.0 ** RNG.integers(-40, 39, 50_000)
    ).astype(np.float32),
    "every float64 decade": RNG.normal(size=50_000) * 10.0 ** RNG.integers(-300, 300, 50_000),
    "the 1e-5 decade": RNG.uniform(1e-5, 1e-4, 5_000) * RNG.choice([-1, 1], 5_000),
    "integers": RNG.integers(-5, 5, 5_000).astype(np.float32),
    "edges": np.array(EDGES * 100),
    "not finite": np.array([np.nan, 1.5, np.inf, -np.inf] * 500),
    "few": np.array([0.5, 2e-05]),
    "none": np.array([], dtype=np.float32),
}


@pytest.mark.parametrize("name", list(CASES))
def test_float_lines_are_pythons_text_byte_for_byte(name: str) -> None:
    values = CASES[name]
    assert float_lines(values) == python_lines(values)


def test_large_csv_bodies_parse_as_loadtxt_parses_them() -> None:
    """Past BULK_CSV_BYTES pandas' reader parses; where it would read a cell differently (an
    empty or ragged one becomes NaN there) np.loadtxt decides, with its error."""
    import io

    from salvia.algorithms.base import AlgorithmError
    from salvia.algorithms.formats import BULK_CSV_BYTES, decode_rows

    rows = RNG.normal(size=(4_000, 6))
    buffer = io.StringIO()
    np.savetxt(buffer, rows, delimiter=",", fmt="%.17g")
    body = buffer.getvalue().encode()
    assert len(body) > BULK_CSV_BYTES
    parsed = decode_rows(body, "text/csv")
    expected = np.loadtxt(io.StringIO(body.decode()), delimiter=",", ndmin=2)
    np.testing.assert_array_equal(parsed, expected)
    np.testing.assert_array_equal(decode_rows(body.decode(), "text/csv"), expected)
    lines = body.decode().splitlines()
    for broken in ("1,,3,4,5,6", "1,2,3"):
        lines[1234] = broken
        with pytest.raises(AlgorithmError, match="not valid text/csv"):
            decode_rows("\n".join(lines).encode(), "text/csv")
