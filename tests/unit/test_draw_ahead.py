"""The draw-ahead worker (dlrm_dist.data.draw_ahead): the batches and the stream states of
drawing in the rank, bit for bit, whatever else draws from the stream in between; a dead
worker costs nothing but the overlap; a draw that raises in the worker raises the same
in the rank."""

from __future__ import annotations

import io
import logging
import pickle
import signal
import time

import numpy as np
import pytest

from dlrm_dist.data import draw_ahead
from dlrm_dist.data.reference_random import RandomDataSpec, ReferenceRandomData

SPEC = RandomDataSpec(dense_features=4, table_sizes=(100, 7, 1000, 3))


def _source(rs, rank=0, world=1, spec=SPEC, batches=6):
    return ReferenceRandomData(spec, rs, 5, 0, batches, 16, rank, world)


def _arrays(batch) -> list[np.ndarray]:
    kjt = batch.sparse_features
    return [
        t.numpy().copy() for t in (batch.dense_features, kjt.lengths(), kjt.values(), batch.labels)
    ]


def _inline(seed, rank=0, world=1, epochs=2, meddle=(), spec=SPEC, draw=None):
    rs = np.random.RandomState(seed)
    return _walk(_source(rs, rank, world, spec), rs, epochs, meddle, draw)


def _walk(source, rs, epochs=2, meddle=(), draw=None):
    """Every batch of `epochs` epochs with the stream's state after it; after the batches
    numbered in `meddle` (1-based, over the run) something else draws from the stream
    (`draw(rs)`; by default three uniform doubles, as an evaluation does)."""
    out = []
    for _ in range(epochs):
        for batch in source:
            out.append((_arrays(batch), rs.get_state()))
            if len(out) in meddle:
                (draw or (lambda r: r.random_sample(3)))(rs)
    return out


def _assert_same(got, want):
    assert len(got) == len(want)
    for (arrays, state), (arrays_want, state_want) in zip(got, want):
        for a, b in zip(arrays, arrays_want):
            np.testing.assert_array_equal(a, b)
        assert draw_ahead.same_state(state, state_want)


@pytest.mark.parametrize("rank, world", [(0, 1), (1, 2)])
@pytest.mark.parametrize("meddle", [(), (2, 3, 9)], ids=["alone", "evaluations"])
def test_batches_and_states_equal_drawing_in_the_rank(rank, world, meddle):
    want = _inline(7, rank, world, meddle=meddle)
    rs = np.random.RandomState(7)
    source = _source(rs, rank, world)
    source.draw_ahead()
    try:
        got = _walk(source, rs, meddle=meddle)
        served = source.ahead.served
    finally:
        source.close()
    _assert_same(got, want)
    # each epoch's first batch, and each after a meddling draw, is drawn in the rank
    assert served == 2 * (6 - 1) - len(meddle)


def _one_normal(rs):
    rs.standard_normal(1)  # the 1st of a pair draws two doubles, the 2nd only the cache


GAUSSIAN = RandomDataSpec(dense_features=4, table_sizes=(100, 7, 1000), dist="gaussian")


@pytest.mark.parametrize(
    "spec, meddle",
    [(SPEC, (1, 2, 3, 4)), (GAUSSIAN, ()), (GAUSSIAN, (2, 3, 9))],
    ids=["uniform-normals-between", "gaussian-alone", "gaussian-evaluations"],
)
def test_the_stream_ends_where_the_rank_would_leave_it_cached_deviate_included(spec, meddle):
    """Uniform batches travel with the stream's key and position alone (Stream, in
    place): a normal deviate drawn or taken from the cache between batches (the 2nd of
    each pair moves neither key nor position) is still in the stream after the next
    batch, as drawing in the rank leaves it. Gaussian batches take the whole state."""
    want = _inline(4, meddle=meddle, spec=spec, draw=_one_normal)
    rs = np.random.RandomState(4)
    source = _source(rs, spec=spec)
    source.draw_ahead()
    try:
        assert source.ahead.in_place == (spec.dist == "uniform")
        got = _walk(source, rs, meddle=meddle, draw=_one_normal)
        served = source.ahead.served
    finally:
        source.close()
    _assert_same(got, want)  # every state compared whole: key, position, cached deviate
    # a cache taken (batches 2 and 4) left key and position: the batch drawn ahead is used
    assert served == 2 * (6 - 1) - len(meddle) + (2 if spec.dist == "uniform" else 0)


def test_the_stream_in_place_reads_and_sets_what_get_state_and_set_state_do():
    rs = np.random.RandomState(9)
    rs.random_sample(1000)  # 2000 words: the key regenerated 3 times, position 128
    rs.standard_normal(1)  # a cached deviate, which the in-place view leaves alone
    stream = draw_ahead.Stream(rs, in_place=True)
    assert stream.words is not None  # this numpy keeps the key where Stream looks
    got, want = stream.get(), rs.get_state()
    assert np.array_equal(got[1], want[1]) and got[2] == want[2] > 128
    assert got[3:] == (0, 0.0)  # the deviate fields read as nothing in place

    other = np.random.RandomState(2)
    other.random_sample(17)
    target = other.get_state()
    stream.set(target)
    after = rs.get_state()
    assert np.array_equal(after[1], target[1]) and after[2] == target[2]
    assert after[3:] == want[3:]  # the cached deviate is still this stream's
    np.testing.assert_array_equal(rs.random_sample(700), other.random_sample(700))

    plain = draw_ahead.Stream(rs, in_place=False)
    assert plain.words is None and draw_ahead.same_state(plain.get(), rs.get_state())


def test_a_dead_worker_leaves_the_rank_drawing_the_same_batches(caplog):
    want = _inline(3, epochs=1)
    rs = np.random.RandomState(3)
    source = _source(rs)
    source.draw_ahead()
    got = []
    with caplog.at_level(logging.WARNING, logger="dlrm_dist"):
        for i, batch in enumerate(source):
            got.append((_arrays(batch), rs.get_state()))
            if i == 1:
                source.ahead.proc.kill()
                source.ahead.proc.wait()
    assert source.ahead.lost.endswith("exit status -9")
    source.close()
    _assert_same(got, want)
    assert "the data worker is gone" in caplog.text


@pytest.mark.timeout(60)  # without the answer timeout it would wait forever
def test_a_hung_worker_is_killed_and_the_rank_draws_the_same_batches(caplog):
    want = _inline(3, epochs=1)
    rs = np.random.RandomState(3)
    source = _source(rs)
    source.draw_ahead()
    source.ahead.answer_timeout_s = 0.5
    got = []
    with caplog.at_level(logging.WARNING, logger="dlrm_dist"):
        for i, batch in enumerate(source):
            got.append((_arrays(batch), rs.get_state()))
            if i == 1:  # stopped, not dead: it would never answer
                source.ahead.proc.send_signal(signal.SIGSTOP)
                time.sleep(0.2)  # past the answer it may have been writing
    assert source.ahead.lost.startswith("it sent nothing for 0.5 s and was killed")
    assert source.ahead.lost.endswith("exit status -9") and source.ahead.served < 5
    source.close()
    _assert_same(got, want)
    assert "the data worker is gone" in caplog.text


def _serve(args, requests: list[tuple[int, tuple]]) -> io.BytesIO:
    inp = io.BytesIO()
    inp.write(pickle.dumps((ReferenceRandomData, args)))
    for index, state in requests:
        inp.write(draw_ahead._REQUEST.pack(index) + draw_ahead._pack_state(state))
    inp.seek(0)
    out = io.BytesIO()
    draw_ahead.serve(inp, out)
    out.seek(0)
    return out


def test_the_worker_answers_a_request_with_the_slice_and_the_state_after():
    rs = np.random.RandomState(11)
    rs.random_sample(5)  # somewhere mid-stream
    before = rs.get_state()
    args = (SPEC, np.random.RandomState(), 5, 0, 6, 16, 1, 2)
    out = _serve(args, [(3, before)])
    index, raw, after = draw_ahead._read_answer(out)
    mine = _source(rs, 1, 2)
    want = mine.local_raw(3)  # from the same state, in this process
    assert index == 3
    for a, b in zip(
        (raw.dense, raw.lengths, raw.values, raw.targets),
        (want.dense, want.lengths, want.values, want.targets),
    ):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    assert draw_ahead.same_state(after, rs.get_state())


def test_a_draw_that_raises_in_the_worker_raises_the_same_in_the_rank():
    bad = RandomDataSpec(dense_features=4, table_sizes=(10,), dist="zipf")
    rs = np.random.RandomState(1)
    out = _serve((bad, np.random.RandomState(), 5, 0, 6, 16, 0, 1), [(1, rs.get_state())])
    kind, text = draw_ahead._read_answer(out)
    assert kind == "error" and text.startswith("ValueError: rand_data_dist 'zipf'")

    # a worker whose answer to the batch in flight is that error
    ahead = draw_ahead.DrawAhead.__new__(draw_ahead.DrawAhead)
    ahead.num_batches, ahead.pending, ahead.lost, ahead.served = 6, (1, rs.get_state()), "x", 0
    ahead.in_place, ahead.stream = False, None
    ahead._receive = lambda: ("error", text)
    source = _source(rs, spec=bad)
    with pytest.raises(ValueError, match="rand_data_dist 'zipf'"):
        ahead.take(1, rs, source.local_raw)


def test_a_state_travels_as_624_little_endian_words_then_pos_gauss_flag_and_cached():
    rs = np.random.RandomState(5)
    rs.standard_normal(3)  # an odd count leaves a cached second deviate
    state = rs.get_state()
    data = draw_ahead._pack_state(state)
    assert len(data) == 624 * 4 + 8 + 8 + 8
    assert np.array_equal(np.frombuffer(data[: 624 * 4], "<u4"), state[1])
    assert int.from_bytes(data[2496:2504], "little") == state[2]
    assert int.from_bytes(data[2504:2512], "little") == state[3] == 1
    assert np.frombuffer(data[2512:], "<f8")[0] == state[4]
    back = draw_ahead._unpack_state(data)
    assert draw_ahead.same_state(back, state) and back[4] == state[4]
