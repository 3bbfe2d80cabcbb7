"""The reference's random data, drawn one batch ahead in a worker process.

The reference draws each batch from its one numpy stream when the step needs it, so the
draw sits on the step's critical path (config C on 2 cores: ~1.2 ms of a ~5 ms step). A
thread cannot take it off: the draw and the step are both mostly Python and share the
GIL (measured: no gain). So a worker process, which imports numpy and not torch (it
is up in ~0.1 s), draws batch k+1 from the stream's state after batch k while the rank
trains on batch k, and sends it back with the stream's state after it.

The stream stays the reference's: when the rank takes a batch its stream is set to the
state after that batch, so whatever else draws from the stream (the evaluation data, a
checkpoint saving it) sees the state the reference's stream has there. A batch drawn
ahead from a state the stream no longer has (something drew in between, e.g. an
evaluation) is thrown away and drawn again here. Same batches, same states, in every
case (tested). If the worker dies, or hangs (nothing for ANSWER_TIMEOUT_S: it is killed),
the rank draws its batches itself from there on.

Protocol (over the worker's stdin and stdout): first the source's class and arguments
(a pickle), then requests (index, state before) answered by (index, this rank's slice, state
after), or an error text when the draw raised (then the rank draws it again and raises
the same), in the fixed binary layout below.
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import struct
import subprocess
import sys
from typing import Any

import numpy as np

log = logging.getLogger("dlrm_dist")


def same_state(a: tuple, b: tuple) -> bool:
    """Whether two RandomState.get_state() tuples are the same stream position."""
    same_key = np.asarray(a[1], np.uint32).tobytes() == np.asarray(b[1], np.uint32).tobytes()
    return a[2] == b[2] and a[3] == b[3] and a[4] == b[4] and same_key  # bytes: 5x faster


# The wire format: fixed-size little-endian headers, then the arrays' bytes (a pickle of
# C's batch cost the rank ~0.17 ms to read, mostly per-message overhead).
# A state: MT19937's 624 words, then pos, has_gauss, cached_gaussian.
_STATE = struct.Struct("<624Iqqd")
_STATE_TAIL = struct.Struct("<qqd")
# A request: the batch index (-1: stop), then the state before it.
_REQUEST = struct.Struct("<q")
# An answer: index (-1: the draw raised, then the message's length and its UTF-8 text),
# samples n, dense features m, tables F, number of values; the state after; then
# dense (n, m) f32, lengths (F, n) i64, values i64, targets (n, 1) f32.
_ANSWER = struct.Struct("<qqqqq")


def _pack_state(state: tuple) -> bytes:
    """The key's bytes as they lie (0.4 us; packing its 624 words one by one took 30)."""
    key = np.ascontiguousarray(state[1], dtype="<u4")
    return key.tobytes() + _STATE_TAIL.pack(state[2], state[3], state[4])


def _unpack_state(data: bytes) -> tuple:
    pos, has_gauss, cached = _STATE_TAIL.unpack_from(data, 4 * 624)
    return ("MT19937", np.frombuffer(data, np.uint32, 624).copy(), pos, has_gauss, cached)


class Stream:
    """The rank's view of its stream's position: `get()` and `set(state)` in get_state()'s
    form. numpy's get_state() and set_state() cost ~60 us each (they copy MT19937's 624
    words one at a time), twice a batch on the rank's critical path; a uniform draw
    depends on the key and position alone (not on the normal sampler's cached deviate,
    which it leaves as it is), so with `in_place` those two are read and written where
    numpy keeps them (~2 us), in its layout (uint32 key[624], int pos), once checked
    against get_state(); the deviate fields then read 0 and are left alone on `set`.
    Anything else (a gaussian draw, a numpy whose layout differs) goes through
    get_state() and set_state()."""

    def __init__(self, rs: np.random.RandomState, in_place: bool) -> None:
        self.rs = rs  # kept: `words` points into it
        self.words = _state_words(rs) if in_place else None

    def get(self) -> tuple:
        if self.words is None:
            return self.rs.get_state()
        return ("MT19937", self.words[:624].copy(), int(self.words[624]), 0, 0.0)

    def set(self, state: tuple) -> None:
        if self.words is None:
            self.rs.set_state(state)
        else:
            self.words[:624] = state[1]
            self.words[624] = state[2]


def _state_words(rs: np.random.RandomState) -> np.ndarray | None:
    """A writable uint32 view of rs's MT19937 key and position (625 words) where numpy
    keeps them; None if they are not where this expects them."""
    import ctypes

    try:
        address = rs._bit_generator.ctypes.state_address
        words = np.ctypeslib.as_array((ctypes.c_uint32 * 625).from_address(address))
    except (AttributeError, TypeError, ValueError):
        return None
    state = rs.get_state()
    if not (np.array_equal(words[:624], state[1]) and int(words[624]) == state[2]):
        return None
    return words


def _read(pipe, size: int) -> bytes:
    data = pipe.read(size)
    if data is None or len(data) < size:
        raise EOFError("the pipe closed")
    return data


def _write_answer(out, index: int, raw, state: tuple) -> None:
    n, m = raw.dense.shape
    header = _ANSWER.pack(index, n, m, raw.lengths.shape[0], raw.values.size)
    out.write(header + _pack_state(state))
    for array, dtype in (
        (raw.dense, np.float32),
        (raw.lengths, np.int64),
        (raw.values, np.int64),
        (raw.targets, np.float32),
    ):
        out.write(np.ascontiguousarray(array, dtype=dtype).data)
    out.flush()


def _read_answer(pipe) -> tuple:
    """(index, RawBatch, state after), or ("error", text)."""
    from dlrm_dist.data.batch_source import RawBatch

    index, n, m, tables, nvalues = _ANSWER.unpack(_read(pipe, _ANSWER.size))
    if index < 0:
        return ("error", _read(pipe, n).decode("utf-8", "replace"))
    state = _unpack_state(_read(pipe, _STATE.size))
    body = _read(pipe, 4 * n * m + 8 * tables * n + 8 * nvalues + 4 * n)
    dense, rest = np.frombuffer(body, np.float32, n * m).reshape(n, m), 4 * n * m
    lengths = np.frombuffer(body, np.int64, tables * n, rest).reshape(tables, n)
    rest += 8 * tables * n
    values = np.frombuffer(body, np.int64, nvalues, rest)
    targets = np.frombuffer(body, np.float32, n, rest + 8 * nvalues).reshape(n, 1)
    return (index, RawBatch(dense, lengths, values, targets), state)


ANSWER_TIMEOUT_S = 60.0  # a worker silent this long is hung (a draw takes milliseconds)
PIPE_BYTES = 1 << 20  # Linux's default most for an unprivileged process


def _widen(pipe) -> None:
    """Let the worker write a whole batch (config C's: ~100 KB) into the pipe without
    waiting for the rank to read the first 64 KB (Linux's default pipe size): measured,
    the rank's read of C's batch took 0.33 ms through the default pipe."""
    try:
        import fcntl

        fcntl.fcntl(pipe.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except (ImportError, OSError):
        pass  # not Linux, or a lower limit: the default size works, a little slower


class DrawAhead:
    """A worker process drawing a ReferenceRandomData's batches one ahead (module doc).
    `source` = (class, arguments) builds the source in the worker, whose `rs` and
    `local_raw(index)` it uses; take()'s `draw_here(index)` draws a batch in this process
    from the shared stream (the fallback and the redraw). `in_place`: the source's draws
    depend on the stream's key and position alone (uniform ones; see Stream)."""

    def __init__(
        self, source: tuple[type, tuple], num_batches: int, in_place: bool = False
    ) -> None:
        self.num_batches = num_batches
        self.in_place = in_place
        self.stream: Stream | None = None  # the rank's stream, made on the first take()
        self.pending: tuple[int, tuple] | None = None  # (index, state before) in flight
        self.lost = ""  # why the worker is gone ("" while it runs)
        self.served = 0  # batches taken as the worker drew them (not drawn again here)
        self.answer_timeout_s = ANSWER_TIMEOUT_S
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        # the worker imports this package from where this process did, whatever its sys.path
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dlrm_dist.data.draw_ahead"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        _widen(self.proc.stdout)
        self._send(pickle.dumps(source, protocol=pickle.HIGHEST_PROTOCOL))

    def _send(self, data: bytes) -> bool:
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
            return True
        except (OSError, ValueError) as exc:
            self._lose(f"could not write to it ({exc})")
            return False

    def _receive(self) -> Any:
        """The answer to the request in flight; None (and the worker gone) when it
        stopped, or sent nothing for answer_timeout_s (hung: it is killed). An answer
        is read whole, and the next is written only when asked for, so nothing of it
        waits in the reader's buffer: the pipe itself is what becomes readable."""
        try:
            ready, _, _ = select.select([self.proc.stdout], [], [], self.answer_timeout_s)
            if not ready:
                self.proc.kill()
                self.proc.wait()
                self._lose(f"it sent nothing for {self.answer_timeout_s:g} s and was killed")
                return None
            return _read_answer(self.proc.stdout)
        except (EOFError, OSError, ValueError) as exc:
            self._lose(f"it stopped ({type(exc).__name__})")
            return None

    def _lose(self, why: str) -> None:
        if not self.lost:
            status = self.proc.poll()
            self.lost = why + (f", exit status {status}" if status is not None else "")
            log.warning(
                "note: the data worker is gone (%s); drawing the batches in this process "
                "from here on (the same numbers, without the overlap)",
                self.lost,
            )
            self.close()
        self.pending = None

    def take(self, index: int, rs: np.random.RandomState, draw_here) -> Any:
        """Batch `index` (this rank's slice) drawn from rs's current state, and rs left
        where the reference's stream is after it; then batch index + 1 is started."""
        if self.stream is None or self.stream.rs is not rs:
            self.stream = Stream(rs, self.in_place)
        got = None
        if self.pending is not None:
            asked, before = self.pending
            self.pending = None
            answer = self._receive()  # an ("error", text): drawn here again, raising here
            ok = answer is not None and answer[0] == asked == index
            if ok and same_state(before, self.stream.get()):
                got = answer
        if got is None:  # nothing ahead, or drawn from a state the stream has left
            raw = draw_here(index)
            after = self.stream.get()
        else:
            raw, after = got[1], got[2]
            self.stream.set(after)
            self.served += 1
        if index + 1 < self.num_batches and not self.lost:
            if self._send(_REQUEST.pack(index + 1) + _pack_state(after)):
                self.pending = (index + 1, after)
        return raw

    def close(self) -> None:
        """End the worker (it exits when its stdin closes); idempotent."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for pipe in (proc.stdin, proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serve(inp, out) -> None:
    """The worker's loop: build the source (its class and arguments, pickled: the class
    by name), then answer requests until stdin closes."""
    make, args = pickle.load(inp)
    source = make(*args)
    while True:
        try:
            (index,) = _REQUEST.unpack(_read(inp, _REQUEST.size))
            state = _unpack_state(_read(inp, _STATE.size))
        except EOFError:
            return
        try:
            try:
                source.rs.set_state(state)
                raw = source.local_raw(index)
            except Exception as exc:  # noqa: BLE001 - the rank draws it again and raises
                text = f"{type(exc).__name__}: {exc}".encode()
                out.write(_ANSWER.pack(-1, len(text), 0, 0, 0) + text)
                out.flush()
                continue
            _write_answer(out, index, raw, source.rs.get_state())
        except (BrokenPipeError, OSError):
            return


def worker_main() -> None:
    """The worker process: Ctrl-C is the rank's to handle (the worker ends when the rank
    closes its stdin), and a stray print goes to stderr, not into the answers."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    serve(sys.stdin.buffer, answers)


if __name__ == "__main__":
    worker_main()
