"""The serving engine's continuous batching, proved against decoding alone and against plain forward passes.

Stand-ins (conftest.py): a "lively" copy of the tiny random llama and two untrained LoRA adapters. Everything runs
in-process on the CPU.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smoltune.serve.engine import Adapter, Engine
from smoltune.serve.request import RequestHandle
from smoltune.serve.stops import StopText
from smoltune.serve.types import MAX_SEED, EngineClosed, EngineFull, GenerationError, GenerationParams
from tests.serve.conftest import make_engine

PROMPTS = [
    "Is 7 odd or even? Answer:",
    "Below is an instruction. Add the two numbers: 3 and 4, then say the result twice.",
    "Hi",
]


@pytest.fixture(scope="module")
def engine(lively_dir: Path, adapter_dirs: dict[str, str]) -> Iterator[Engine]:
    made = make_engine(lively_dir, adapter_dirs, max_batch=8)
    yield made
    made.drain(5)


class Gate:
    """An observer that records batch sizes and can hold the decode loop after a chosen number of tokens."""

    def __init__(self, hold_after: int | None = None, token_delay_s: float = 0.0) -> None:
        self.batches: list[int] = []
        self.finished: list[str] = []
        self.hold_after, self.token_delay_s = hold_after, token_delay_s
        self.held, self.release = threading.Event(), threading.Event()
        self._tokens = 0

    def on_batch(self, size: int) -> None:
        self.batches.append(size)

    def on_token(self, adapter: str, seconds: float) -> None:
        self._tokens += 1
        time.sleep(self.token_delay_s)
        if self._tokens == self.hold_after:
            self.held.set()
            self.release.wait(30)

    def on_finish(self, adapter: str, prompt_tokens: int, completion_tokens: int, finish_reason: str) -> None:
        self.finished.append(finish_reason)


def ids_of(completion) -> list[int]:
    return [token.token_id for token in completion.tokens]


def direct_logprobs(lively_dir: Path, adapter_dir: str | None, ids: list[int]):
    """log_softmax of one plain forward pass (PEFT with only this adapter) over `ids`: [len(ids), vocab]."""
    import torch
    from peft import PeftModel

    from smoltune.model import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(str(lively_dir), "cpu")
    if adapter_dir:
        model = PeftModel.from_pretrained(model, adapter_dir)
    with torch.inference_mode():
        logits = model.eval()(input_ids=torch.tensor([ids])).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)


# -- equivalence --------------------------------------------------------------------------------------------


def test_alone_equals_plain_generate(engine: Engine, lively_dir: Path, adapter_dirs: dict[str, str]) -> None:
    import torch
    from peft import PeftModel

    from smoltune.model import load_model_and_tokenizer

    ids = engine.encode(PROMPTS[0])
    served = engine.submit(ids, "left", GenerationParams(max_new_tokens=12)).result(30)
    base, tokenizer = load_model_and_tokenizer(str(lively_dir), "cpu")
    model = PeftModel.from_pretrained(base, adapter_dirs["left"]).eval()
    out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    expected = out[0, len(ids) :].tolist()
    eos = tokenizer.eos_token_id
    assert ids_of(served) == (expected[: expected.index(eos)] if eos in expected else expected)
    plain = engine.submit(ids, None, GenerationParams(max_new_tokens=12)).result(30)
    assert ids_of(plain) != ids_of(served), "the adapter must change the answer for this test to mean anything"


def test_greedy_rows_joining_midway_equal_alone(new_engine) -> None:
    gate = Gate()
    engine = new_engine(max_batch=4, observer=gate)
    cases = [(PROMPTS[1], "left", 30), (PROMPTS[0], "right", 12), (PROMPTS[2], None, 20), (PROMPTS[0], "left", 8)]
    alone = [engine.submit(engine.encode(p), a, GenerationParams(max_new_tokens=n)).result(30) for p, a, n in cases]
    gate._tokens, gate.batches, gate.hold_after = 0, [], 5
    first = engine.submit(engine.encode(cases[0][0]), cases[0][1], GenerationParams(max_new_tokens=cases[0][2]))
    assert gate.held.wait(30)  # the first row is decoding, 5 tokens in: the others join it now
    rest = [engine.submit(engine.encode(p), a, GenerationParams(max_new_tokens=n)) for p, a, n in cases[1:]]
    gate.release.set()
    together = [first.result(30), *(handle.result(30) for handle in rest)]
    assert [ids_of(c) for c in together] == [ids_of(c) for c in alone]
    assert max(gate.batches) == 4  # they really shared steps (and rows of different lengths left early)


def test_requests_that_come_during_a_prefill_are_prefilled_before_the_next_decoding_step(new_engine) -> None:
    """A burst of requests waits for prefills only: what arrives while one prefill runs is prefilled next, not
    after a decoding step of the rows already running."""
    events: list[str] = []
    later: list = []

    class Burst:
        def on_prefill(self, cached: int, computed: int) -> None:
            events.append("prefill")
            if len(later) < 2:  # two more requests arrive while the first two prefills run
                later.append(
                    engine.submit(engine.encode(PROMPTS[len(later)]), "left", GenerationParams(max_new_tokens=4))
                )

        def on_batch(self, size: int) -> None:
            events.append(f"step of {size}")

    engine = new_engine(max_batch=4, observer=Burst())
    first = engine.submit(engine.encode(PROMPTS[2]), None, GenerationParams(max_new_tokens=4))
    assert first.result(30).completion_tokens and all(handle.result(30).completion_tokens for handle in later)
    assert events[:4] == ["prefill", "prefill", "prefill", "step of 3"]


def test_seeded_sample_same_alone_and_in_batch(new_engine) -> None:
    gate = Gate()
    engine = new_engine(max_batch=4, observer=gate)
    params = GenerationParams(max_new_tokens=16, temperature=0.9, top_p=0.95, seed=1234)
    ids = engine.encode(PROMPTS[0])
    alone = [ids_of(engine.submit(ids, "right", params).result(30)) for _ in range(2)]
    gate._tokens, gate.batches, gate.hold_after = 0, [], 3
    neighbours = [
        engine.submit(engine.encode(p), a, GenerationParams(max_new_tokens=20, temperature=1.0, seed=s))
        for s, (p, a) in enumerate([(PROMPTS[1], "left"), (PROMPTS[2], None)])
    ]
    assert gate.held.wait(30)  # the neighbours are decoding: the seeded request joins them
    batched = engine.submit(ids, "right", params)
    gate.release.set()
    assert alone[0] == alone[1] == ids_of(batched.result(30))
    assert all(handle.result(30).completion_tokens for handle in neighbours)
    assert max(gate.batches) == 3
    other_seed = GenerationParams(max_new_tokens=16, temperature=0.9, top_p=0.95, seed=99)
    assert ids_of(engine.submit(ids, "right", other_seed).result(30)) != alone[0]


def test_echo_logprobs_equal_a_forward_pass(engine: Engine, lively_dir: Path, adapter_dirs: dict[str, str]) -> None:
    ids = engine.encode(PROMPTS[1])
    params = GenerationParams(max_new_tokens=0, logprobs=3, echo_logprobs=True)
    done = engine.submit(ids, "left", params).result(30)
    assert (done.completion_tokens, done.text, done.finish_reason) == (0, "", "length")
    expected = direct_logprobs(lively_dir, adapter_dirs["left"], ids)
    scored = done.prompt_logprobs
    assert [t.token_id for t in scored] == ids
    assert scored[0].logprob is None and scored[0].top is None
    for position, token in enumerate(scored[1:], start=1):
        assert token.logprob == pytest.approx(float(expected[position - 1, ids[position]]), abs=1e-4)
        assert 1 <= len(token.top) <= 3  # fewer when two of the top tokens read the same (half characters)
        assert max(token.top.values()) == pytest.approx(float(expected[position - 1].max()), abs=1e-4)


def test_echo_logprobs_of_prompts_prefilled_together(new_engine, lively_dir: Path, adapter_dirs: dict[str, str]):
    gate = Gate(hold_after=2)
    engine = new_engine(max_batch=4, observer=gate)
    running = engine.submit(engine.encode(PROMPTS[2]), None, GenerationParams(max_new_tokens=6))
    assert gate.held.wait(30)  # the loop is mid-step: the next two join in one left-padded prefill
    params = GenerationParams(max_new_tokens=0, logprobs=1, echo_logprobs=True)
    short, long = (engine.submit(engine.encode(PROMPTS[i]), "right", params) for i in (0, 1))
    gate.release.set()
    for handle, prompt in ((short, PROMPTS[0]), (long, PROMPTS[1])):
        ids = engine.encode(prompt)
        expected = direct_logprobs(lively_dir, adapter_dirs["right"], ids)
        scored = handle.result(30).prompt_logprobs
        got = [t.logprob for t in scored[1:]]
        assert got == pytest.approx([float(expected[i - 1, ids[i]]) for i in range(1, len(ids))], abs=1e-4)
    assert running.result(30).completion_tokens == 6


def test_generated_logprobs_equal_a_forward_pass(
    engine: Engine, lively_dir: Path, adapter_dirs: dict[str, str]
) -> None:
    ids = engine.encode(PROMPTS[0])
    neighbour = engine.submit(engine.encode(PROMPTS[1]), "left", GenerationParams(max_new_tokens=20))
    done = engine.submit(ids, "right", GenerationParams(max_new_tokens=6, logprobs=2)).result(30)
    neighbour.result(30)
    expected = direct_logprobs(lively_dir, adapter_dirs["right"], ids + ids_of(done))
    assert done.tokens
    for step, token in enumerate(done.tokens):
        row = expected[len(ids) - 1 + step]
        assert token.logprob == pytest.approx(float(row[token.token_id]), abs=1e-4)
        assert token.logprob == pytest.approx(max(token.top.values()), abs=1e-6)  # greedy took the top one
        assert token.text in token.top


def test_adapter_added_while_serving(lively_dir: Path, adapter_dirs: dict[str, str]) -> None:
    gate = Gate()
    engine = make_engine(lively_dir, {}, max_batch=4, observer=gate)
    try:
        ids = engine.encode(PROMPTS[1])
        alone = ids_of(engine.submit(ids, None, GenerationParams(max_new_tokens=16)).result(30))
        gate._tokens, gate.hold_after = 0, 4
        running = engine.submit(ids, None, GenerationParams(max_new_tokens=16))
        assert gate.held.wait(30)
        attach = threading.Thread(target=engine.add_adapter, args=(Adapter("left", adapter_dirs["left"], "alpaca"),))
        attach.start()  # waits for the step the loop is in, then counts from the next one
        gate.release.set()
        attach.join(30)
        tuned = engine.submit(engine.encode(PROMPTS[0]), "left", GenerationParams(max_new_tokens=5)).result(30)
        assert ids_of(running.result(30)) == alone and tuned.completion_tokens == 5
    finally:
        engine.drain(5)


# -- requests' own settings ---------------------------------------------------------------------------------


def test_stop_string_cuts_and_is_never_streamed(engine: Engine) -> None:
    ids = engine.encode(PROMPTS[1])
    full = engine.submit(ids, "left", GenerationParams(max_new_tokens=24)).result(30)
    assert len(full.text) > 8
    stop = full.text[4:7]
    handle = engine.submit(ids, "left", GenerationParams(max_new_tokens=24, stop=(stop,)))
    streamed = "".join(event.text for event in handle.events())
    done = handle.result(1)
    assert done.finish_reason == "stop"
    assert done.text == streamed == full.text[: full.text.index(stop)]


def test_stop_text_withholds_a_possible_stop_start() -> None:
    pieces = {1: "ab", 2: "c E", 3: "N", 4: "x", 5: "ND more", 6: "D more"}

    def decode(ids: list[int]) -> str:
        return "".join(pieces[i] for i in ids)

    text = StopText(decode, ("END",))
    assert [text.add(1), text.add(2), text.add(3), text.add(4), text.add(5)] == ["ab", "c ", "", "ENx", "ND more"]
    assert not text.stopped
    stopped = StopText(decode, ("END",))
    assert [stopped.add(1), stopped.add(2), stopped.add(3), stopped.add(6)] == ["ab", "c ", "", ""]
    assert stopped.stopped and stopped.text == "abc "
    half = StopText(lambda ids: "ok\ufffd" if len(ids) == 1 else "ok\u00e9", ())
    assert [half.add(1), half.add(2)] == ["ok", "\u00e9"]  # half a character is never sent


def test_sampling_extremes_are_safe(engine: Engine) -> None:
    ids = engine.encode(PROMPTS[0])
    greedy = ids_of(engine.submit(ids, None, GenerationParams(max_new_tokens=8)).result(30))
    tiny_temperature = GenerationParams(max_new_tokens=8, temperature=1e-45, seed=MAX_SEED)
    assert ids_of(engine.submit(ids, None, tiny_temperature).result(30)) == greedy
    narrow = GenerationParams(max_new_tokens=8, temperature=0.5, top_p=1e-9, seed=0)
    assert ids_of(engine.submit(ids, None, narrow).result(30)) == greedy
    for bad in (
        GenerationParams(max_new_tokens=4, temperature=1.0, seed=MAX_SEED + 1),
        GenerationParams(max_new_tokens=4, top_p=0.0),
        GenerationParams(max_new_tokens=4, temperature=float("nan")),
        GenerationParams(max_new_tokens=engine.max_positions),
    ):
        with pytest.raises(ValueError):
            engine.submit(ids, None, bad)
    with pytest.raises(ValueError, match="adapter"):
        engine.submit(ids, "nobody", GenerationParams(max_new_tokens=4))


# -- nothing can hang ---------------------------------------------------------------------------------------


def test_a_failing_row_fails_alone(new_engine, monkeypatch: pytest.MonkeyPatch) -> None:
    import smoltune.serve.loop as loop

    real = loop.choose_token

    def faulty(logits, params, generator):
        if params.seed == 666 and params.max_new_tokens == 9:  # the marked request fails on its own
            raise RuntimeError("injected fault: internal detail")
        return real(logits, params, generator)

    monkeypatch.setattr(loop, "choose_token", faulty)
    engine = new_engine(max_batch=4)
    good = [engine.submit(engine.encode(p), "left", GenerationParams(max_new_tokens=15)) for p in PROMPTS]
    bad = engine.submit(engine.encode(PROMPTS[0]), "right", GenerationParams(max_new_tokens=9, seed=666))
    with pytest.raises(GenerationError) as failed:
        bad.result(10)
    assert "internal detail" not in str(failed.value)
    with pytest.raises(GenerationError):
        list(bad.events())
    assert all(handle.result(30).completion_tokens > 0 for handle in good)


def test_a_failed_forward_fails_its_batch_and_the_loop_goes_on(new_engine) -> None:
    engine = new_engine(max_batch=4)
    model, calls = engine.model, {"n": 0}
    real_forward = model.forward

    def broken_once(*args, **kwargs):
        if kwargs["input_ids"].shape[0] == 2 and not calls["n"]:  # the first step the two rows share
            calls["n"] += 1
            raise RuntimeError("injected: out of memory")
        return real_forward(*args, **kwargs)

    model.forward = broken_once
    with engine._loop.model_lock:  # the second joins before the first can finish
        handles = [engine.submit(engine.encode(p), "left", GenerationParams(max_new_tokens=5)) for p in PROMPTS[:2]]
    for handle in handles:
        with pytest.raises(GenerationError):
            handle.result(10)
    after = engine.submit(engine.encode(PROMPTS[0]), "right", GenerationParams(max_new_tokens=5)).result(10)
    assert after.completion_tokens == 5


def test_the_loop_dying_wakes_every_waiter(new_engine, monkeypatch: pytest.MonkeyPatch) -> None:
    class Fatal(BaseException):
        pass

    engine = new_engine(max_batch=1, observer=Gate(token_delay_s=0.02))
    running = engine.submit(engine.encode(PROMPTS[0]), None, GenerationParams(max_new_tokens=200))
    waiting = engine.submit(engine.encode(PROMPTS[1]), None, GenerationParams(max_new_tokens=5))

    def die() -> None:
        raise Fatal

    monkeypatch.setattr(engine._loop, "_step", die)
    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # the thread's death is the point
    for handle in (running, waiting):
        with pytest.raises(GenerationError):
            handle.result(10)
    with pytest.raises(EngineClosed):
        engine.submit(engine.encode(PROMPTS[0]), None, GenerationParams(max_new_tokens=5))


def test_cancel_frees_the_slot(new_engine) -> None:
    engine = new_engine(max_batch=2, observer=Gate(token_delay_s=0.01))
    ids = engine.encode(PROMPTS[0])
    engine.kv_budget_tokens = len(ids) + 200  # room for one such request at a time
    handle = engine.submit(ids, None, GenerationParams(max_new_tokens=200))
    next(iter(handle.events()))
    with pytest.raises(EngineFull):
        engine.submit(ids, None, GenerationParams(max_new_tokens=200))
    handle.cancel()
    done = handle.result(10)
    assert done.finish_reason == "cancelled" and done.completion_tokens < 200
    assert engine.submit(ids, None, GenerationParams(max_new_tokens=3)).result(10).completion_tokens == 3


def test_engine_full_and_never_fits(new_engine) -> None:
    engine = new_engine(max_batch=4, kv_budget_tokens=100)
    ids = engine.encode(PROMPTS[0])
    with pytest.raises(ValueError, match="KV cache"):
        engine.submit(ids, None, GenerationParams(max_new_tokens=101 - len(ids)))
    with engine._loop.model_lock:  # hold the loop so the first request stays admitted
        first = engine.submit(ids, None, GenerationParams(max_new_tokens=50 - len(ids)))
        second = engine.submit(ids, None, GenerationParams(max_new_tokens=50 - len(ids)))  # 2 rows x 50 fit
        with pytest.raises(EngineFull):
            engine.submit(ids, None, GenerationParams(max_new_tokens=4))  # 3 rows x 50 would not
    assert first.result(30) and second.result(30)


def test_the_queue_is_bounded(new_engine) -> None:
    """At most MAX_QUEUED_PER_SLOT x max_batch requests are admitted: each holds an API worker thread."""
    from smoltune.serve.engine import MAX_QUEUED_PER_SLOT

    engine = new_engine(max_batch=1)
    ids = engine.encode(PROMPTS[0])
    with engine._loop.model_lock:
        held = [engine.submit(ids, None, GenerationParams(max_new_tokens=2)) for _ in range(MAX_QUEUED_PER_SLOT)]
        with pytest.raises(EngineFull, match="already waiting"):
            engine.submit(ids, None, GenerationParams(max_new_tokens=2))
    assert all(handle.result(30).completion_tokens == 2 for handle in held)


def test_adapter_names_refuse_what_peft_cannot_hold(tmp_path: Path, adapter_dirs: dict[str, str]) -> None:
    """A '.' in an adapter name is refused up front (torch's ModuleDict keys refuse it deep inside PEFT); a
    run folder whose files are broken is one ConfigError, and a promoted run named a.b is served as a-b."""
    from smoltune.errors import ConfigError
    from smoltune.pipeline.registry import served_name
    from smoltune.serve.engine import adapter_source

    with pytest.raises(ConfigError, match="no '.'"):
        adapter_source("tuned.v2", next(iter(adapter_dirs.values())))
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(ConfigError, match="summary.json cannot be read"):
        adapter_source("run", tmp_path)
    (tmp_path / "summary.json").write_text('{"artifacts": {"adapter_dir": "/x"}}')
    with pytest.raises(ConfigError, match="no readable data.template"):
        adapter_source("run", tmp_path)
    assert served_name("exp.1") == "exp-1"


def test_max_batch_is_honoured(new_engine) -> None:
    gate = Gate()
    engine = new_engine(max_batch=2, observer=gate)
    handles = [engine.submit(engine.encode(p), None, GenerationParams(max_new_tokens=10)) for p in PROMPTS * 2]
    assert all(handle.result(30).completion_tokens == 10 for handle in handles)
    assert max(gate.batches) == 2


def test_deadline_running_and_queued(new_engine) -> None:
    engine = new_engine(max_batch=1, observer=Gate(token_delay_s=0.02))
    running = engine.submit(engine.encode(PROMPTS[0]), None, GenerationParams(max_new_tokens=300, deadline_s=0.3))
    queued = engine.submit(engine.encode(PROMPTS[1]), None, GenerationParams(max_new_tokens=5, deadline_s=0.1))
    done, expired = running.result(10), queued.result(10)
    assert done.finish_reason == "deadline" and 0 < done.completion_tokens < 300
    assert expired.finish_reason == "deadline" and expired.completion_tokens == 0


def test_drain_finishes_in_flight_then_refuses(new_engine) -> None:
    engine = new_engine(max_batch=4, observer=Gate(token_delay_s=0.005))
    handles = [engine.submit(engine.encode(p), None, GenerationParams(max_new_tokens=10)) for p in PROMPTS]
    engine.drain(30)
    assert all(handle.done and handle.result(0).completion_tokens == 10 for handle in handles)
    with pytest.raises(EngineClosed):
        engine.submit(engine.encode(PROMPTS[0]), None, GenerationParams(max_new_tokens=2))


def test_drain_timeout_fails_what_is_left(new_engine) -> None:
    engine = new_engine(max_batch=1, observer=Gate(token_delay_s=0.05))
    slow = engine.submit(engine.encode(PROMPTS[0]), None, GenerationParams(max_new_tokens=500))
    started = time.monotonic()
    engine.drain(0.3)
    with pytest.raises(GenerationError):
        slow.result(5)
    assert time.monotonic() - started < 5


def test_handle_result_times_out_without_a_loop() -> None:
    with pytest.raises(TimeoutError):
        RequestHandle().result(0.01)
