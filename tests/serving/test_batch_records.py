"""How batch transform cuts a streamed object into payloads and puts the answers back together."""

from __future__ import annotations

import io

import pytest

from salvia.serving import batch_records as records
from salvia.serving.batch_records import RecordError


def lines(count: int, width: int = 9) -> bytes:
    return b"".join(b"%0*d\n" % (width, i) for i in range(count))


class Trickle(io.BytesIO):
    """A stream that answers every read with at most `most` bytes, as a socket may."""

    def __init__(self, data: bytes, most: int) -> None:
        super().__init__(data)
        self.most = most

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return super().read()
        return super().read(min(size, self.most))


@pytest.mark.parametrize("most", [1 << 30, 7, 333])
def test_streamed_payloads_are_whole_lines_under_the_limit_in_order(most: int) -> None:
    data = lines(500)  # 10 bytes a line
    batches = list(records.read_line_chunks(Trickle(data, most).read, 1000))
    assert b"".join(b.payload for b in batches) == data
    assert all(len(b.payload) <= 1000 and b.payload.endswith(b"\n") for b in batches)
    assert all(len(b.payload) >= 990 for b in batches[:-1])  # full payloads despite short reads
    assert [b.first for b in batches] == [i * 100 for i in range(len(batches))]


def test_a_streamed_object_whose_last_line_has_no_newline() -> None:
    data = lines(30) + b"last"
    batches = list(records.read_line_chunks(io.BytesIO(data).read, 64))
    assert b"".join(b.payload for b in batches) == data
    assert batches[-1].payload.endswith(b"last")
    assert batches[-1].first == 30 - (len(batches[-1].payload) - 4) // 10


def test_blank_payloads_are_not_sent_and_no_limit_is_one_payload() -> None:
    assert list(records.read_line_chunks(io.BytesIO(b"\n\n  \n").read, 4)) == []
    data = lines(50)
    (only,) = records.read_line_chunks(io.BytesIO(data).read, 0)
    assert only.payload == data and only.first == 0


def test_a_line_over_the_limit_names_its_record() -> None:
    data = lines(25) + b"x" * 300 + b"\n" + lines(3)
    with pytest.raises(RecordError, match="Record 26 is larger"):
        list(records.read_line_chunks(io.BytesIO(data).read, 100))


def test_answers_are_assembled_by_line_or_as_they_are() -> None:
    assert records.assembled(b"1\n2", by_line=True) == [b"1\n2", b"\n"]
    assert records.assembled(b"1\n2\n", by_line=True) == [b"1\n2\n"]
    assert b"".join(records.assembled(b"1\n2\n\n\n", by_line=True)) == b"1\n2\n"
    assert records.assembled(b"\n", by_line=True) == []
    assert records.assembled(b"1\n2\n\n", by_line=False) == [b"1\n2\n\n"]


def test_payloads_are_evened_out_over_the_lanes() -> None:
    data = lines(8500)  # 85,000 bytes: 9 payloads of at most 10,000 would leave a lane idle
    target = records.even_payloads(len(data), 10_000, lanes=2)
    batches = list(records.read_line_chunks(io.BytesIO(data).read, 10_000, target))
    assert len(batches) == 10 and b"".join(b.payload for b in batches) == data
    sizes = [len(b.payload) for b in batches]
    assert max(sizes) <= 10_000 and min(sizes) >= 0.9 * max(sizes)
    assert records.even_payloads(5_000, 10_000, lanes=4) == 10_000  # one payload: as it is
    assert records.even_payloads(85_000, 0, lanes=2) == 0  # no limit
