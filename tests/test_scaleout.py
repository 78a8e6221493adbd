"""Scale-out and fault tolerance: three real ``satmon worker`` processes in one consumer group on the
embedded Tansu broker, simulator traffic, every input record accounted for.

One test, three phases (one broker run, so the group joins are paid once):

1. **Scale-out, exact accounting.** The input partitions are split across the three workers; the
   per-topic-partition counters scraped from their ``/metrics``
   (``satmon_pipeline_records_processed_total`` + ``satmon_pipeline_records_dead_lettered_total``)
   add up to exactly what was produced on each topic-partition, and the dead letters on
   ``satmon-dead-letter`` are exactly the records that ingest rejects.
2. **SIGKILL mid-stream.** One worker is killed while traffic is flowing; its partitions move to the
   two others, which process everything after the committed offsets / resume floors.
3. **Clean restart.** The killed worker comes back, gets partitions again, and more traffic flows.

The killed worker's counters die with it, so the end-to-end reconciliation is read from what the
broker holds: the changelog state of every subscriber (the real core keeps the ids of the last
``RECENT_IDS`` events it applied, and the traffic stays under that per subscriber, so the union is
every event applied, and a repeat inside one list would be an event applied twice) and the dead
letters (by origin topic/partition/offset). Both must match the produced input exactly; duplicates
are allowed only where at-least-once allows them: on the killed worker's partitions.
"""

from __future__ import annotations

import asyncio
import re
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from support.kafka import INPUTS, Broker, WorkerProcess, committed_offsets, read_topic, run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 6   # 3 workers x 2: Faust's assignor caps each at ceil(partitions / workers), so a restarted worker gets 2 back
WORKERS = 3
APP_ID = "t-scale"
_SAMPLE = re.compile(r'^(\w+)\{(.*)\}$')
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def simulator_records(subscribers: int, hours: float, seed: int) -> list[tuple[str, bytes | None, bytes]]:
    """Simulator traffic with more noise than the default (2 % malformed, 2 % duplicates)."""
    from monitor.sim.simulate import SimConfig, generate

    cfg = SimConfig(subscribers=subscribers, hours=hours, scenario="quiet", seed=seed,
                    malformed_share=0.02, duplicate_share=0.02)
    return list(generate(cfg))


OUTCOMES = {"satmon_pipeline_records_processed_total": "processed",
            "satmon_pipeline_records_dead_lettered_total": "dead_lettered",
            "satmon_pipeline_records_skipped_total": "skipped"}


def tp_counts(w: WorkerProcess) -> dict[tuple[str, int], dict[str, float]]:
    """``{(topic, partition): {"processed": n, "dead_lettered": n, "skipped": n}}`` from one worker's
    /metrics (skipped: re-deliveries below the resume floor, not processed again)."""
    out: dict[tuple[str, int], dict[str, float]] = {}
    for key, value in w.metrics().items():
        m = _SAMPLE.match(key)
        if m and m.group(1) in OUTCOMES:
            outcome = OUTCOMES[m.group(1)]
            labels = dict(_LABEL.findall(m.group(2)))
            out.setdefault((labels["topic"], int(labels["partition"])), {})[outcome] = value
    return out


def accounted(ws: list[WorkerProcess]) -> Counter:
    """Input records accounted (processed or dead-lettered) per topic-partition, over ``ws``."""
    total: Counter = Counter()
    for w in ws:
        for tp, outcomes in tp_counts(w).items():
            total[tp] += int(outcomes.get("processed", 0) + outcomes.get("dead_lettered", 0))
    return total


class PacedProducer(threading.Thread):
    """Produces ``records`` at about ``rate`` records/s from a thread (traffic that keeps flowing
    while the test kills a worker); ``positions`` gets ``(topic, partition, offset)`` per record."""

    def __init__(self, bootstrap: str, records: list[tuple[str, bytes | None, bytes]], rate: float) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.records, self.rate = bootstrap, records, rate
        self.sent = 0
        self.positions: list[tuple[str, int, int]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported by the test
            self.error = exc

    async def _run(self) -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5, max_batch_size=64 * 1024)
        await producer.start()
        try:
            step = 200
            t0 = time.monotonic()
            futures = []
            for i in range(0, len(self.records), step):
                for topic, key, value in self.records[i:i + step]:
                    futures.append(await producer.send(topic, value, key=key))
                self.sent = min(len(self.records), i + step)
                await asyncio.sleep(max(0.0, t0 + self.sent / self.rate - time.monotonic()))
            metas = await asyncio.gather(*futures)
            self.positions = [(m.topic, m.partition, m.offset) for m in metas]
        finally:
            await producer.stop()


def produce_all(bootstrap: str, records: list[tuple[str, bytes | None, bytes]]) -> list[tuple[str, int, int]]:
    p = PacedProducer(bootstrap, records, rate=1e9)
    p.run()
    if p.error is not None:
        raise p.error
    return p.positions


def expected_outcomes(records: list[tuple[str, bytes | None, bytes]],
                      positions: list[tuple[str, int, int]]) -> tuple[dict[str, str], set[tuple[str, int, int]]]:
    """What ingest makes of the produced records: ``{event_id: subscriber}`` of the valid events and
    the ``(topic, partition, offset)`` of every record it dead-letters."""
    from monitor.records.events import DeadLetter
    from monitor.records.ingest import Ingest

    ingest = Ingest(clock_ms=lambda: 0)
    valid: dict[str, str] = {}
    invalid: set[tuple[str, int, int]] = set()
    for (topic, key, value), (t, p, o) in zip(records, positions):
        assert t == topic
        out = ingest.decode(topic, p, o, key, value)
        if isinstance(out, DeadLetter):
            invalid.add((t, p, o))
        else:
            valid[out.event_id] = out.subscriber_id
    return valid, invalid


def wait(predicate: Any, timeout_s: float, what: str, ws: list[WorkerProcess],
         detail: Any = None) -> None:
    """Poll ``predicate`` until true; on timeout fail with the workers' logs and ``detail()``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for w in ws:
            if w.proc is not None and w.proc.poll() is not None:
                raise AssertionError(f"{w.worker_id} exited ({w.proc.returncode}) waiting for {what}:\n{w.tail()}")
        if predicate():
            return
        time.sleep(0.3)
    extra = f"\n{detail()}" if detail is not None else ""
    raise AssertionError(f"timed out waiting for {what}:{extra}\n"
                         + "\n".join(f"--- {w.worker_id}\n{w.tail(25)}" for w in ws))


def partitions_of(w: WorkerProcess) -> int:
    return int(w.total("satmon_worker_partitions_assigned")) if w.proc is not None and w.proc.poll() is None else 0


STANDBY = ("--standby-replicas", "1")


def test_three_workers_scale_out_survive_sigkill_and_restart_with_every_record_accounted(
        workers: Any, tmp_path: Path) -> None:
    from monitor.scoring.core import _decode_state
    from monitor.scoring.features import event_key, recent_keys
    from monitor.records.events import decode
    from monitor.scoring.features import RECENT_IDS

    t_start = time.monotonic()
    broker = Broker(partitions=PARTITIONS).start()
    try:
        records = simulator_records(subscribers=20_000, hours=0.25, seed=11)
        n = len(records)
        chunks = [records[: n // 5], records[n // 5: 4 * n // 5], records[4 * n // 5:]]

        # with a standby of every partition: the failover path the setting exists for is tested too
        ws = [workers(broker, app_id=APP_ID, worker_id=f"w{i}", core="real", extra_args=STANDBY)
              for i in range(WORKERS)]
        wait(lambda: all(partitions_of(w) > 0 for w in ws) and sum(partitions_of(w) for w in ws) == PARTITIONS
             and all(w.get("/readyz")[0] == 200 for w in ws), 90, "partitions split across 3 ready workers", ws)
        split = {w.worker_id: partitions_of(w) for w in ws}
        t_ready = time.monotonic()

        # -- phase 1: exact accounting from the workers' own metrics ------------------------------
        pos1 = produce_all(broker.bootstrap, chunks[0])
        produced1 = Counter((t, p) for t, p, _ in pos1)
        wait(lambda: sum(accounted(ws).values()) >= len(chunks[0]), 60, "phase 1 accounted", ws)
        time.sleep(1.5)  # a late double count would show now
        acc1 = accounted(ws)
        assert acc1 == produced1, {tp: (acc1[tp], produced1[tp]) for tp in produced1 | acc1 if acc1[tp] != produced1[tp]}
        _, invalid1 = expected_outcomes(chunks[0], pos1)
        dead1 = sum(o.get("dead_lettered", 0) for w in ws for o in tp_counts(w).values())
        assert dead1 == len(invalid1) > 0

        # -- phase 2: SIGKILL one worker while traffic flows --------------------------------------
        victim = max(ws, key=partitions_of)       # the one with two partitions: the largest move
        victim_tps = {tp for tp, o in tp_counts(victim).items() if o.get("processed", 0) + o.get("dead_lettered", 0)}
        victim_partitions = {p for _, p in victim_tps}
        producer = PacedProducer(broker.bootstrap, chunks[1], rate=4_000)
        producer.start()
        wait(lambda: producer.sent >= len(chunks[1]) // 3 or not producer.is_alive(), 30, "traffic flowing", ws)
        before_kill = sum(accounted([victim]).values())
        victim.stop(signal.SIGKILL)
        t_kill = time.monotonic()
        committed_at_kill = run(committed_offsets(broker.bootstrap, APP_ID, partitions=PARTITIONS))
        survivors = [w for w in ws if w is not victim]
        wait(lambda: sum(partitions_of(w) for w in survivors) == PARTITIONS, 60,
             "the killed worker's partitions moved to the survivors", survivors)
        failover_s = time.monotonic() - t_kill
        producer.join(60)
        assert producer.error is None and len(producer.positions) == len(chunks[1])
        pos2 = producer.positions
        end2 = Counter((t, p) for t, p, _ in pos1 + pos2)

        def caught_up(end: Counter) -> bool:
            committed = run(committed_offsets(broker.bootstrap, APP_ID, partitions=PARTITIONS))
            return all(committed.get(tp, 0) >= n_ for tp, n_ in end.items())

        def lag(end: Counter, ws_: list[WorkerProcess]) -> Any:
            def report() -> str:
                committed = run(committed_offsets(broker.bootstrap, APP_ID, partitions=PARTITIONS))
                behind = {f"{t}/{p}": (committed.get((t, p), 0), n_) for (t, p), n_ in sorted(end.items())
                          if committed.get((t, p), 0) < n_}
                seen = {w.worker_id: {f"{t}/{p}": o for (t, p), o in sorted(tp_counts(w).items())} for w in ws_}
                offsets = {w.worker_id: {k.split("_topic_partition_")[1]: v for k, v in w.metrics().items()
                                         if "_topic_partition_end_offset" in k or "_offset_commited" in k}
                           for w in ws_}
                return f"committed < produced: {behind}\nper worker: {seen}\nend/committed offsets: {offsets}"
            return report

        wait(lambda: caught_up(end2), 60, "survivors committed everything", survivors, lag(end2, survivors))

        # -- phase 3: clean restart of the killed worker --------------------------------------------
        back = workers(broker, app_id=APP_ID, worker_id=victim.worker_id, core="real", extra_args=STANDBY)
        everyone = [*survivors, back]
        wait(lambda: partitions_of(back) > 0 and sum(partitions_of(w) for w in everyone) == PARTITIONS, 60,
             "the restarted worker owns partitions again", everyone)
        pos3 = produce_all(broker.bootstrap, chunks[2])
        end3 = end2 + Counter((t, p) for t, p, _ in pos3)
        wait(lambda: caught_up(end3), 60, "all traffic committed", everyone, lag(end3, everyone))
        # The killed worker accounted for everything below its committed offsets (a commit implies
        # the effects were acknowledged); everything from there on was delivered to the others, and
        # none of it processed twice (re-deliveries below a resume floor are counted as skipped).
        after_kill: dict[tuple[str, int], Counter] = {}
        for w in everyone:
            for tp, outcomes in tp_counts(w).items():
                after_kill.setdefault(tp, Counter()).update(outcomes)
        skipped = 0
        for tp in {tp for tp in end3 if tp[1] in victim_partitions}:
            c = after_kill.get(tp, Counter())
            resume = committed_at_kill.get(tp, 0)
            assert c["processed"] + c["dead_lettered"] <= end3[tp] - resume, (tp, c, resume, end3[tp])
            assert c["processed"] + c["dead_lettered"] + c["skipped"] >= end3[tp] - resume, (tp, c, resume)
            skipped += int(c["skipped"])
        for w in everyone:  # SIGTERM flushes state and floors, commits, leaves the group
            assert w.stop(signal.SIGTERM, timeout_s=45) == 0, w.tail()
        t_end = time.monotonic()

        # -- reconciliation from the broker ----------------------------------------------------------
        valid, invalid = expected_outcomes(records, pos1 + pos2 + pos3)
        per_subscriber = Counter(valid.values())
        assert max(per_subscriber.values()) <= RECENT_IDS, "traffic too dense for exact state accounting"

        letters = [decode("dead_letter.v1", r.value)
                   for r in run(read_topic(broker.bootstrap, "satmon-dead-letter", idle_s=2.0))]
        letter_origins = Counter((d.source_topic, d.partition, d.offset) for d in letters)
        assert set(letter_origins) == invalid                                   # every one, no other
        assert all(d.reason for d in letters)
        dup_letters = {o: c for o, c in letter_origins.items() if c > 1}
        assert {p for _, p, _ in dup_letters} <= victim_partitions              # only where at-least-once

        changelog = run(read_topic(broker.bootstrap, f"{APP_ID}-subscriber-state-changelog", idle_s=2.0))
        latest: dict[bytes, bytes | None] = {}
        for r in sorted(changelog, key=lambda r: (r.partition, r.offset)):
            latest[r.key] = r.value
        states = {k.decode(): _decode_state(v) for k, v in latest.items() if v}
        owner = {event_key(i): sid for i, sid in valid.items()}
        assert len(owner) == len(valid)                                         # no key collisions
        applied = Counter(k for st in states.values() for k in recent_keys(st))
        assert set(applied) == set(owner)                                       # 0 events unaccounted
        assert max(applied.values()) == 1                                       # none applied twice
        for sid, st in states.items():
            assert all(owner[k] == sid for k in recent_keys(st))

        scores = run(read_topic(broker.bootstrap, "risk-scores", idle_s=2.0))
        import orjson

        score_keys = Counter((r.partition, r.key, orjson.loads(r.value)["ts_ms"]) for r in scores)
        dup_scores = {k: c for k, c in score_keys.items() if c > 1}
        assert {p for p, _, _ in dup_scores} <= victim_partitions

        print(f"\nrecords {n} (valid distinct {len(valid)}, dead-lettered {len(invalid)}), split {split}, "
              f"group ready {t_ready - t_start:.1f} s, victim {victim.worker_id} partitions "
              f"{sorted(victim_partitions)} (accounted {before_kill} before the kill), "
              f"committed at kill {sum(committed_at_kill.values())}, failover {failover_s:.1f} s, "
              f"skipped below floors {skipped}, "
              f"re-delivered dead letters {sum(c - 1 for c in dup_letters.values())}, "
              f"duplicate scores {sum(c - 1 for c in dup_scores.values())} of {len(scores)}, "
              f"total {t_end - t_start:.1f} s")
    finally:
        broker.stop()


def test_inputs_are_the_three_topics() -> None:
    assert set(INPUTS) == {"network-events", "care-tickets", "app-interactions"}
