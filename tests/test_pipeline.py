"""The worker's pipeline without a broker: resume floors, revocation, dead letters, checkpoint timing,
and replay driving the same object. Records come from the simulator's producer (``simulate.generate``),
in the shape the consumer hands them over."""

from __future__ import annotations

import asyncio
import functools

import msgspec
import pytest

from monitor.records import events as ev
from monitor.sim import simulate
from monitor.pipeline import DictStore, Outputs, Record, RiskPipeline, TopicPartition, default_core_factory
from monitor.replay import run_records
from monitor.records.topics import DEAD_LETTER, INPUT_TOPICS, RISK_SCORES, Partitioner


@functools.lru_cache(maxsize=2)
def produced(malformed_share: float = 0.0) -> tuple[tuple[str, bytes, bytes], ...]:
    config = simulate.SimConfig(subscribers=2000, hours=1.0, seed=11, malformed_share=malformed_share,
                                duplicate_share=0.0, late_share=0.0)
    return tuple(simulate.generate(config, simulate.Simulator(config)))


def batches(records, partitions: int = 2, size: int = 500):
    """Consumer-shaped batches of producer records (Kafka's partitioner, per-partition offsets)."""
    part = Partitioner(partitions)
    offsets: dict[tuple[str, int], int] = {}
    batch: dict[TopicPartition, list[Record]] = {}
    for n, (topic, key, value) in enumerate(records, 1):
        p = part(key)
        o = offsets.get((topic, p), 0)
        offsets[(topic, p)] = o + 1
        batch.setdefault(TopicPartition(topic, p), []).append(Record(o, key, value))
        if n % size == 0:
            yield batch
            batch = {}
    if batch:
        yield batch


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pipeline_over(state: DictStore, model: DictStore, clock: Clock, **options) -> RiskPipeline:
    return RiskPipeline(state_table=state, model_table=model, make_core=default_core_factory(None),
                        clock=clock, **options)


def scores_in(out: Outputs) -> list[ev.RiskScore]:
    return [ev.decode("risk_score.v1", v) for (topic, _p), recs in out.records().items()
            if topic == RISK_SCORES for _k, v in recs]


def test_a_new_owner_resumes_above_the_acknowledged_floor_and_commits_it():
    state, model, clock = DictStore("s"), DictStore("m"), Clock()
    first = pipeline_over(state, model, clock)
    all_batches = list(batches(produced()))
    out = Outputs()
    acked: dict[TopicPartition, int] = {}
    first.durable_offsets = lambda: acked
    for batch in all_batches[:3]:
        first.handle(batch, out)
        for tp, recs in batch.items():
            acked[tp] = recs[-1].offset + 1     # the broker acknowledged the batch's effects
    first.handle(all_batches[3], out)           # ... writes the floor of the first three
    floors = {p: msgspec.json.decode(model.get(p, f"offsets:{p}".encode())) for p in (0, 1)}
    assert floors == {p: {tp.topic: o for tp, o in acked.items() if tp.partition == p} for p in (0, 1)}

    # the first owner dies; a new one is handed everything from offset 0 again (commits were lost)
    second = pipeline_over(state, model, clock)
    out = Outputs()
    for batch in all_batches[:3]:
        second.handle(batch, out)
    assert second.skipped_below_floor == sum(len(r) for b in all_batches[:3] for r in b.values())
    assert not scores_in(out) and second.processed == {}
    assert second.pop_inherited_floors() == floors and second.pop_inherited_floors() == {}
    second.handle(all_batches[3], out)
    assert sum(second.processed.values()) == sum(len(r) for r in all_batches[3].values())


def test_revocation_flushes_state_and_model_that_the_next_owner_restores():
    state, model, clock = DictStore("s"), DictStore("m"), Clock()
    first = pipeline_over(state, model, clock)
    out = Outputs()
    for batch in batches(produced()):
        first.handle(batch, out)
    before = {p: dict(core.scores_at(core.watermark_ms)) for p, core in first.cores.items()}
    asyncio.run(first.on_revoked({TopicPartition(t, p) for t in INPUT_TOPICS for p in (0, 1)}, out))
    assert first.cores == {}
    assert all(model.get(p, str(p).encode()) is not None for p in (0, 1))

    second = pipeline_over(state, model, clock)
    for p in (0, 1):
        core = second.core_for(p)
        assert core.checkpoint() == model.get(p, str(p).encode())
        for sid in before[p]:
            assert core.state(sid) is not None      # read back from the state store
        assert len(before[p]) > 100 and dict(core.scores_at(core.watermark_ms)) == pytest.approx(before[p])


def test_invalid_records_become_dead_letters_and_never_stop_the_batch():
    out = Outputs()
    pipeline = RiskPipeline.in_memory()
    records = produced(malformed_share=0.02)
    for batch in batches(records):
        pipeline.handle(batch, out)
    letters = [ev.decode("dead_letter.v1", v) for (topic, _p), recs in out.records().items()
               if topic == DEAD_LETTER for _k, v in recs]
    assert letters and sum(pipeline.dead_lettered.values()) == len(letters)
    assert sum(pipeline.processed.values()) + len(letters) == len(records)
    assert all(letter.reason and letter.source_topic in INPUT_TOPICS and letter.offset is not None
               for letter in letters)


def test_models_are_checkpointed_every_interval_and_not_in_between():
    state, model, clock = DictStore("s"), DictStore("m"), Clock()
    written: list[tuple[int, int]] = []
    pipeline = pipeline_over(state, model, clock, checkpoint_interval_s=30.0)
    pipeline.on_checkpoint = lambda p, n: written.append((p, n))
    all_batches = list(batches(produced()))
    out = Outputs()
    pipeline.handle(all_batches[0], out)
    clock.now += 29.0
    pipeline.handle(all_batches[1], out)
    assert written == []
    clock.now += 1.0
    pipeline.handle(all_batches[2], out)
    assert sorted(p for p, _n in written) == sorted({tp.partition for tp in all_batches[2]})
    written.clear()
    pipeline.flush_all(out)
    assert sorted(p for p, _n in written) == [0, 1]


def test_replay_runs_the_same_pipeline_as_batches_fed_by_hand():
    # the replay driver and a hand-fed pipeline (the consumer's shape) give the same scores
    records = produced()
    by_hand = RiskPipeline.in_memory()
    out = Outputs()
    expected = []
    for batch in batches(records, partitions=2, size=500):
        by_hand.handle(batch, out)
        expected.extend((s.subscriber_id, s.ts_ms, s.score) for s in scores_in(out))
        out.clear()
    got = []
    run_records(records, partitions=2, batch_records=500, hotspots=False,
                on_scores=lambda scores: got.extend((s.subscriber_id, s.ts_ms, s.score) for s in scores))
    assert len(got) > 100 and sorted(got) == sorted(expected)


def test_the_topic_registry_names_the_stream_each_record_type_carries():
    from monitor.records.topics import STREAM_TOPICS, TOPIC_STREAMS

    assert TOPIC_STREAMS == {t: ev.RECORD_TYPES[s].stream for t, s in ev.INPUT_TOPICS.items()}
    assert all(TOPIC_STREAMS[t] == s for s, t in STREAM_TOPICS.items())


@functools.lru_cache(maxsize=1)
def produced_over_a_day() -> tuple[tuple[str, bytes, bytes], ...]:
    """26 simulated hours: the first hours' snapshots mature into labels (24 h horizon)."""
    config = simulate.SimConfig(subscribers=60, hours=26, seed=8, malformed_share=0.0,
                                duplicate_share=0.0, late_share=0.0)
    return tuple(simulate.generate(config, simulate.Simulator(config)))


def test_with_the_labels_topic_the_cores_send_their_labels_instead_of_learning():
    """The worker's configuration: every matured label goes out on satmon-labels with the batch,
    the process's model learns none by itself; fed those records in order, a model ends exactly
    where the in-process pipeline's model (the cores teaching it directly) ends."""
    from monitor.records.topics import LABELS
    from monitor.scoring.risk import RiskModel, decode_label

    records = produced_over_a_day()
    sending = pipeline_over(DictStore("s"), DictStore("m"), Clock(), labels_topic=True)
    learning = pipeline_over(DictStore("s"), DictStore("m"), Clock())
    sent: list[bytes] = []
    for batch in batches(records):
        out = Outputs()
        sending.handle(batch, out)
        learning.handle(batch, Outputs())
        sent += [v for (topic, p), recs in out.records().items() if topic == LABELS for _k, v in recs]
        assert all(p == 0 for (topic, p) in out.records() if topic == LABELS)
    model = next(iter(sending.cores.values())).model
    assert model.n_labels == 0 and len(sent) == sending.labels_sent > 40
    topic = RiskModel()
    for offset, blob in enumerate(sent):
        topic.learn(decode_label(blob), offset=offset)
    reference = next(iter(learning.cores.values())).model.to_state()
    assert topic.labels_offset == len(sent)
    assert {**topic.to_state(), "labels_offset": None} == reference
