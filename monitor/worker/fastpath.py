"""The batched consumer path: Faust's consumer, transport and recovery kept, its per-message path skipped.

Faust delivers every record through ``Consumer._drain_messages``, which runs
``wait_first(callback(message), suspend_flow.wait())`` for each one (two asyncio tasks per message),
then the conductor, a channel queue, a stream, an event and an ack: about 200 µs per record here.
satmon's input topics do not need any of that per record. :class:`FastConsumer` replaces the drain
loop: each ``getmany`` batch is split by topic; records of the *fast topics* (satmon's three inputs)
go to one synchronous :class:`BatchHandler` call for the whole batch, the app's *side topics*
(``SatmonApp.satmon_side_handlers``: the hot-spot stage's ``satmon-cell-windows``) to their own
handler, and everything else (table changelogs during recovery and standby, any ordinary agent)
keeps Faust's normal path.

What stays Faust's: the consumer group (rebalance, the table-aware partition assignor, standbys),
table recovery from changelogs, commits, the producer, web views and sensors. What changes:

* flow control is checked once per batch; a batch that started always finishes (it has no await
  points except handing records to the producer), and revocation and shutdown wait for it
  (:meth:`FastConsumer.wait_batch_done`; at shutdown ``SatmonApp._stop_fetcher`` waits before
  Faust cancels the drain loop);
* offsets are acknowledged per partition as "next offset" after the batch's outputs and state
  changes were handed to the producer; :meth:`FastConsumer._commit` then refuses to commit while
  any of those sends failed, and waits for sends still in flight (Faust's own commit also flushes
  the producer first) -- so a committed offset never runs ahead of its effects (at-least-once);
* outputs (:class:`monitor.pipeline.Outputs`) are produced with :func:`send_outputs`: one aiokafka
  ``BatchBuilder`` per topic-partition instead of one ``send`` coroutine per record;
* a ProduceRequest is encoded in one pass (:func:`install_produce_encoder`): aiokafka's generic
  encoder concatenates every record batch into a new bytes object at each of six nesting levels;
* :meth:`FastConsumerThread._highwaters` takes changelog high-waters from a *Fetch* response (see
  :func:`fetch_highwaters`): the embedded broker (Tansu) answers ListOffsets with the first offset of
  a partition's last batch + 1, which would end table recovery early and lose state.

"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from monitor.pipeline import BatchHandler, Outputs

log = logging.getLogger(__name__)

# Kafka's fetch-wait: how long the broker may hold a Fetch while it has no data. Faust's driver
# hard-codes 1.5 s, which is also the latency floor of a quiet partition; 100 ms keeps an idle
# worker cheap and its end-to-end latency low.
FETCH_MAX_WAIT_MS = 100


#: a commit still in progress after this many seconds is logged, with what it waits for, and again
#: every as many seconds
COMMIT_SLOW_WARN_S = 10.0

#: how often the drain loop calls the handler's ``tick`` (seconds)
TICK_S = 1.0

#: the :class:`~monitor.pipeline.StageClock` row of the time ``send_outputs`` waits for the
#: accumulator (a partition's previous batch still unsent): other tasks run meanwhile, so it is
#: not the producer's work and the benchmark does not add it up
AWAITING_PRODUCER = "awaiting the producer"


#: record batches of one topic-partition that may wait in the producer's accumulator behind the one
#: being sent before a hand-over waits (:func:`send_outputs`). aiokafka's ``send_batch`` waits as
#: soon as *one* batch of the partition is queued, and its sender has one request in flight per
#: broker carrying one batch per partition: a batch's ~4 state batches per partition (96 KiB each)
#: went out one request apiece, and the drain loop waited for each round trip before it handed over
#: the next. Queued, the sender takes one batch of every partition per request while the loop goes
#: on; the bound keeps a broker slower than the worker from queueing without limit.
MAX_QUEUED_BATCHES = 16


def _queue_batch(producer: Any, batch: Any, topic: str, partition: int, max_queued: int) -> asyncio.Future | None:
    """Append ``batch`` behind the batches of its partition already waiting in aiokafka's
    accumulator, without waiting for them to leave; None when that is not possible here (nothing
    queued -- ``send_batch`` does not wait then --, the bound reached, a transactional producer,
    an aiokafka without these internals): the caller uses ``send_batch``."""
    acc = getattr(producer, "_message_accumulator", None)
    queues = getattr(acc, "_batches", None)
    if queues is None or not hasattr(acc, "_append_batch"):
        return None
    txn = getattr(producer, "_txn_manager", None)
    if txn is not None and getattr(txn, "transactional_id", None) is not None:
        return None
    tp = TopicPartition(topic, partition)
    queued = queues.get(tp)   # a defaultdict: .get, so an empty queue is not created
    if not queued or len(queued) >= max_queued or acc._closed or acc._exception is not None:
        return None
    # What AIOKafkaProducer.send_batch does after its checks, which a queued partition has passed:
    # its metadata is known and its partition valid.
    return asyncio.shield(acc._append_batch(batch, tp).future)


async def send_outputs(out: Outputs, producer: Any, clock: Any = None, *,
                       max_queued: int | None = None) -> list[asyncio.Future]:
    """Hand every record queued in ``out`` to the aiokafka ``producer``; returns the delivery futures.

    Records of one partition keep their order. Returns once everything is in the producer's
    accumulator (delivery itself is awaited by the commit); a partition's batches queue there
    behind each other up to ``max_queued`` (default :data:`MAX_QUEUED_BATCHES`; 1 waits whenever
    one is queued, as aiokafka's ``send_batch`` does) before the hand-over waits.
    ``clock`` (a :class:`~monitor.pipeline.StageClock`) gets the synchronous work as ``producer``
    and the waits as :data:`AWAITING_PRODUCER`."""
    futures: list[asyncio.Future] = []
    t = clock.now() if clock is not None else 0.0
    if max_queued is None:
        max_queued = MAX_QUEUED_BATCHES

    async def send(batch: Any, topic: str, partition: int) -> asyncio.Future:
        nonlocal t
        fut = _queue_batch(producer, batch, topic, partition, max_queued)
        if fut is not None:
            return fut
        if clock is None:
            return await producer.send_batch(batch, topic, partition=partition)
        t = clock.add("producer", t)
        fut = await producer.send_batch(batch, topic, partition=partition)
        t = clock.add(AWAITING_PRODUCER, t)
        return fut

    for (topic, partition), records in out.records().items():
        batch = producer.create_batch()
        last: asyncio.Future | None = None
        count = 0
        for key, value in records:
            if batch.append(timestamp=None, key=key, value=value) is None:
                last = await send(batch, topic, partition)
                futures.append(last)
                batch = producer.create_batch()
                if batch.append(timestamp=None, key=key, value=value) is None:
                    raise ValueError(f"record too large for one producer batch ({topic}/{partition})")
                count = 0
            count += 1
        if count:
            last = await send(batch, topic, partition)
            futures.append(last)
        callback = out.callbacks().get((topic, partition))
        if callback is not None and last is not None:
            n_last = count

            def _done(fut: asyncio.Future, _cb: Callable[[int], None] = callback, _n: int = n_last) -> None:
                if not fut.cancelled() and fut.exception() is None:
                    _cb(fut.result().offset + _n - 1)

            last.add_done_callback(_done)
    out.clear()
    if clock is not None:
        clock.add("producer", t)
    return futures


#: event-loop turns the drain loop gives other tasks between two batches: at least the first
#: (new I/O is only seen by a turn's select), at most the second (:func:`_let_others_run`)
MIN_YIELDS_PER_BATCH, MAX_YIELDS_PER_BATCH = 4, 16


async def _let_others_run(ready: Any) -> None:
    """Yield to the event loop for :data:`MIN_YIELDS_PER_BATCH` turns, then until nothing else is
    ready to run (``ready``: the loop's queue of ready callbacks, None where the loop has none), at
    most :data:`MAX_YIELDS_PER_BATCH` turns. A turn with nothing else to do costs a select with a
    zero timeout (a few microseconds).

    A batch has no await point but its hand-over to the producer, and that no longer waits
    (:data:`MAX_QUEUED_BATCHES`): with one turn per batch an HTTP request, which needs a few turns
    (accept, read, handler, write), advanced one step per batch, and a ``/metrics`` scrape at full
    load took 80 ms at the median and 250 ms at p90 (27 and 100 when the hand-over still waited)."""
    for turn in range(1, MAX_YIELDS_PER_BATCH + 1):
        await asyncio.sleep(0)
        if turn >= MIN_YIELDS_PER_BATCH and not ready:   # nothing else wants the loop now
            return


_pack_h = struct.Struct(">h").pack
_pack_i = struct.Struct(">i").pack
_pack_ii = struct.Struct(">ii").pack
_pack_hi = struct.Struct(">hi").pack


def _encode_produce_request(self: Any) -> bytes:
    """A ``ProduceRequest_v0..v7`` struct's wire bytes, as aiokafka's ``Struct.encode`` gives them,
    joined once: aiokafka's generic encoder builds each level (record batch, partition, partition
    array, topic, topic array, request) as a concatenation of the one below, so every batch was
    copied six times, and at malloc's mmap threshold each copy of a large request is a fresh
    mapping (measured: ~450 µs for a 480 KB request against ~9 µs)."""
    parts: list[bytes] = []
    append = parts.append
    if self._satmon_transactional:
        tid = self.transactional_id
        if tid is None:
            append(b"\xff\xff")
        else:
            raw = str(tid).encode("utf-8")
            append(_pack_h(len(raw)))
            append(raw)
    append(_pack_hi(self.required_acks, self.timeout))
    topics = self.topics
    append(_pack_i(len(topics)))
    for topic, partitions in topics:
        name = str(topic).encode("utf-8")
        append(_pack_h(len(name)))
        append(name)
        append(_pack_i(len(partitions)))
        for partition, records in partitions:
            if records is None:
                append(_pack_ii(partition, -1))
            else:
                append(_pack_ii(partition, len(records)))
                append(records)
    return b"".join(parts)


def install_produce_encoder() -> list[str]:
    """Give aiokafka's ProduceRequest structs :func:`_encode_produce_request` as their ``encode``.

    Only a version whose schema is the one this encoder writes, and whose own encoder gives the
    same bytes for a probe request, is changed (a later aiokafka that changes either keeps its own).
    Idempotent; ``SATMON_AIOKAFKA_PRODUCE_ENCODER=1`` keeps aiokafka's. Returns the versions changed."""
    from aiokafka.protocol.produce import ProduceRequest

    if os.environ.get("SATMON_AIOKAFKA_PRODUCE_ENCODER") == "1":
        return []
    probe_topics = [("t\u00e9", [(0, b"\x00\x01batch"), (3, b"")]), ("satmon-x", [(1, b"z" * 300)])]
    changed = []
    for cls in getattr(ProduceRequest, "_CLASSES", ()):
        if cls.__dict__.get("encode") is _encode_produce_request:
            changed.append(cls.__name__)
            continue
        names = tuple(getattr(cls.SCHEMA, "names", ()))
        if names not in (("required_acks", "timeout", "topics"),
                         ("transactional_id", "required_acks", "timeout", "topics")):
            continue
        transactional = names[0] == "transactional_id"
        ok = True
        for tid in ((None, "satmon-txn") if transactional else (None,)):
            probe = ProduceRequest(tid, -1, 30_000, probe_topics).build(cls)
            cls._satmon_transactional = transactional
            try:
                ok = ok and _encode_produce_request(probe) == cls.encode(probe)
            except Exception:  # noqa: BLE001 - a struct this encoder does not understand keeps its own
                ok = False
        if ok:
            cls.encode = _encode_produce_request
            changed.append(cls.__name__)
    return changed


async def fetch_highwaters(bootstrap_servers: list[str] | str, listed: Mapping[TP, int],
                           *, timeout_s: float = 5.0) -> dict[TP, int]:
    """High-waters of ``listed`` partitions read from Fetch responses, never below ``listed``.

    ``listed`` holds what ListOffsets (``end_offsets``) answered. On Kafka that is the high-water and
    this function only confirms it. Tansu answers the first offset of the partition's last batch
    + 1 instead; a Fetch starting at ``listed - 1`` returns that batch, and every Fetch response
    carries the correct high-water.
    """
    result = {tp: int(offset) for tp, offset in listed.items()}
    wanted = {tp: offset for tp, offset in result.items() if offset > 0}
    if not wanted:
        return result
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False,
                                group_id=None, fetch_max_wait_ms=50, max_partition_fetch_bytes=1,
                                request_timeout_ms=int(timeout_s * 1000))
    await consumer.start()
    try:
        tps = {tp: TopicPartition(tp.topic, tp.partition) for tp in wanted}
        consumer.assign(list(tps.values()))
        for tp, atp in tps.items():
            consumer.seek(atp, wanted[tp] - 1)
        pending = set(tps)
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            await consumer.getmany(*[tps[tp] for tp in pending], timeout_ms=200)
            for tp in list(pending):
                hw = consumer.highwater(tps[tp])
                if hw is not None:
                    result[tp] = max(result[tp], hw)
                    pending.discard(tp)
        if pending:
            log.warning("no Fetch high-water within %.1fs for %s; kept ListOffsets values", timeout_s,
                        sorted(f"{tp.topic}/{tp.partition}" for tp in pending))
    finally:
        await consumer.stop()
    return result


async def leave_group_at_generation_zero(consumer: AIOKafkaConsumer) -> bool:
    """Send LeaveGroup for a member of generation 0, which aiokafka skips.

    Kafka numbers generations from 1; Tansu starts at 0, so aiokafka's ``_maybe_leave_group``
    (``if self.generation > 0``) never leaves and a restarted worker waits for the old member to
    expire. Returns True when a LeaveGroup was sent and answered without error.
    """
    from aiokafka.protocol.group import LeaveGroupRequest

    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or getattr(coordinator, "generation", None) != 0:
        return False
    member_id = getattr(coordinator, "member_id", "")
    if not member_id or getattr(coordinator, "_group_instance_id", None) is not None:
        return False
    try:
        response = await coordinator._send_req(LeaveGroupRequest(coordinator.group_id, member_id))
    except (KafkaError, asyncio.TimeoutError, OSError) as exc:
        log.warning("LeaveGroup (generation 0) failed: %r", exc)
        return False
    ok = getattr(response, "error_code", 0) == 0
    log.info("LeaveGroup (generation 0) sent for %s: %s", member_id, "ok" if ok else response)
    return ok


class FastConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread with a short fetch wait and Fetch-checked high-waters."""

    def _create_worker_consumer(self, transport: Any) -> AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Read by aiokafka's Fetcher, which consumer.start() creates from this attribute.
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer

    async def on_thread_stop(self) -> None:
        consumer = self._consumer
        if consumer is not None:
            await leave_group_at_generation_zero(consumer)
        await super().on_thread_stop()

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        listed = await super()._highwaters(partitions)
        if self.consumer.in_transaction or not getattr(self.app, "satmon_fetch_highwaters", True):
            return listed
        servers = faust_aiokafka.server_list(self.transport.url, self.transport.default_port)
        fixed = await fetch_highwaters(servers, listed)
        raised = {tp: (listed[tp], hw) for tp, hw in fixed.items() if hw != listed[tp]}
        if raised:
            log.info("high-waters corrected from Fetch (ListOffsets was low): %s",
                     {f"{tp.topic}/{tp.partition}": v for tp, v in raised.items()})
        return fixed


class FastConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with a batched drain loop for the app's fast topics.

    The batch handler is ``app.satmon_batch_handler`` (a :class:`BatchHandler`); without one the
    consumer behaves exactly like Faust's.
    """

    _fast_next: dict[TP, int]
    #: next offsets whose batch effects the broker has acknowledged (every send succeeded)
    _durable_next: dict[TP, int]
    _fast_sends: list[asyncio.Future]
    _batch_idle: asyncio.Event
    _send_error: BaseException | None = None
    _commit_stage = ""

    def on_init(self) -> None:
        super().on_init()
        self._fast_next = {}
        self._durable_next = {}
        self._fast_sends = []
        self._batch_idle = asyncio.Event()
        self._batch_idle.set()
        self.fast_batches = 0
        self.fast_records = 0
        #: commits Faust attempted that did not happen (retried at the next commit)
        self.commits_not_done = 0
        #: records fetched, dropped (flow stopped for a rebalance or recovery) and fetched again
        self.records_rewound = 0
        #: topic-partitions whose commit was advanced to a previous owner's acknowledged floor
        self.floors_committed = 0

    def _new_consumer_thread(self) -> FastConsumerThread:
        return FastConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def backlog(self, topic: str, partition: int) -> int | None:
        """Records of ``topic``/``partition`` still waiting in Kafka: the high-water of the last
        fetch response minus the fetch position (the next offset ``getmany`` returns, so what was
        handed to the batch handler is behind it). None when unknown (not assigned, or not fetched
        yet). Reads aiokafka's partition state directly: the public ``position()`` is a coroutine."""
        try:
            consumer = self._thread._ensure_consumer()
            assignment = consumer._subscription.subscription.assignment
            state = assignment.state_value(TopicPartition(topic, partition)) if assignment else None
        except Exception:  # no consumer yet, or a rebalance in progress
            return None
        if state is None or state.highwater is None or not state.has_valid_position:
            return None
        return max(0, state.highwater - state.position)

    # -- acknowledgement and commit -------------------------------------------------------------

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterable[TP]:
        seen = set()
        for tp in super()._filter_tps_with_pending_acks(topics):
            seen.add(tp)
            yield tp
        for tp in list(self._fast_next):
            if tp not in seen and (topics is None or tp in topics or tp.topic in topics):
                yield tp

    def _new_offset(self, tp: TP) -> int | None:
        offset = self._fast_next.get(tp)
        if offset is not None:
            return offset
        return super()._new_offset(tp)

    async def _commit_offsets(self, offsets: Mapping[TP, int], start_new_transaction: bool = True) -> bool:
        # Faust records every offset it tried to commit as committed, even when the commit did not
        # happen (aiokafka's "already rebalanced" answer, a partition revoked meanwhile), and from
        # then on commits a partition only above that offset. When no newer record arrives, the
        # group's committed offset stays behind for good and the next owner re-reads the tail.
        # Put the last offsets really committed back, so the next commit tries again.
        before = {tp: self._committed_offset.get(tp) for tp in offsets}
        self._commit_stage = "flushing the producer"
        watchdog = asyncio.ensure_future(self._commit_watchdog(len(offsets)))
        try:
            did_commit = await super()._commit_offsets(offsets, start_new_transaction=start_new_transaction)
        finally:
            watchdog.cancel()
        if not did_commit:
            for tp, offset in before.items():
                if offset is None:
                    self._committed_offset.pop(tp, None)
                else:
                    self._committed_offset[tp] = offset
            self.commits_not_done += 1
            log.info("commit of %s not done (a rebalance, or a send failed): retried at the next commit",
                     {f"{tp.topic}/{tp.partition}": o for tp, o in offsets.items()})
        return did_commit

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        # Faust flushed the producer just before calling us; make sure every send behind these
        # offsets was acknowledged, and never commit past a failed one.
        sends, self._fast_sends = self._fast_sends, []
        if sends:
            self._commit_stage = f"waiting for {len(sends)} sends to be acknowledged"
            await asyncio.wait(sends)
            for fut in sends:
                if not fut.cancelled() and fut.exception() is not None and self._send_error is None:
                    self._send_error = fut.exception()
        if self._send_error is not None:
            log.error("not committing %s: a send failed (%r); the records will be reprocessed",
                      {f"{tp.topic}/{tp.partition}": o for tp, o in offsets.items()}, self._send_error)
            await self.crash(self._send_error)
            return False
        self._commit_stage = "committing to the broker"
        return await super()._commit(offsets)

    def _take_inherited_floors(self, inherited: Mapping[int, Mapping[str, int]]) -> None:
        """Commit what a partition's previous owner acknowledged but had not committed (``inherited``
        from ``RiskPipeline.pop_inherited_floors``): offsets below a floor are applied and durable."""
        if not inherited:
            return
        assigned = self.assignment()
        for partition, floors in inherited.items():
            for topic, offset in floors.items():
                tp = TP(topic, partition)
                if tp in assigned and self._fast_next.get(tp, -1) < offset:
                    self._fast_next[tp] = offset
                    if self._durable_next.get(tp, -1) < offset:
                        self._durable_next[tp] = offset
                    self.floors_committed += 1

    async def _rewind(self, records: Mapping[TP, list[Any]]) -> None:
        """Seek every still-assigned partition of dropped ``records`` back to the first of them.

        Faust's ``perform_seek`` (aiokafka's ``seek_to_committed``) only moves partitions with a
        committed offset above 0: in a partition nobody committed yet (a sparse topic, a new
        partition), records fetched and then dropped were never fetched again, and once a later
        record was committed they were lost without a trace (found reading the code while chasing
        the scale-out test's lost commit; not seen to fire there)."""
        try:
            assigned = self.assignment()
        except Exception:  # no consumer (stopping)
            return
        for tp, recs in records.items():
            if recs and tp in assigned:
                try:
                    await self.seek(tp, recs[0].offset)
                except Exception as exc:  # revoked meanwhile: its next owner starts at the commit
                    log.info("could not rewind %s/%d to %d: %r", tp.topic, tp.partition, recs[0].offset, exc)
                    continue
                self.records_rewound += len(recs)

    async def _commit_watchdog(self, n: int) -> None:
        """Say, every ``COMMIT_SLOW_WARN_S`` seconds, where a commit still in progress is waiting
        (Faust's own flight recorder speaks only after 300 s; commits stop while one hangs)."""
        waited = 0.0
        while True:
            await asyncio.sleep(COMMIT_SLOW_WARN_S)
            waited += COMMIT_SLOW_WARN_S
            log.warning("a commit of %d partitions has been in progress for %.0f s: %s", n, waited,
                        self._commit_stage)

    # -- rebalance ------------------------------------------------------------------------------

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        # A batch in progress finishes first (it has no awaits but the hand-over to the producer);
        # then the handler flushes the revoked partitions' state and we commit what is acked, so
        # the partition's next owner recovers state and offsets that match.
        await self._batch_idle.wait()
        handler = getattr(self.app, "satmon_batch_handler", None)
        if handler is not None and revoked:
            await self._settle()
            out = Outputs()
            await handler.on_revoked(set(revoked), out)
            await self._send(out)
            if any(tp in self._fast_next for tp in revoked):
                try:
                    await self.commit({tp for tp in revoked if tp in self._fast_next})
                except (KafkaError, asyncio.TimeoutError) as exc:  # pragma: no cover - broker dependent
                    log.warning("commit on revocation failed (%r): records since the last commit "
                                "will be processed again by the next owner", exc)
        for tp in revoked:
            self._fast_next.pop(tp, None)
            self._durable_next.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    async def wait_batch_done(self) -> None:
        """Return once no batch (or tick) is being handed to the producer.

        At shutdown Faust cancels the drain loop (it stops the fetcher) *before* it calls
        :meth:`wait_empty`; a batch cancelled half-way through its hand-over to the producer lost
        the records not yet handed over, the cores' dirty states among them (the pipeline had
        already taken them). ``SatmonApp._stop_fetcher`` awaits this first; the flow is stopped by
        then, so no new batch starts."""
        await self._batch_idle.wait()

    def batch_in_progress(self) -> bool:
        """True while a batch (or tick) is between the handler and the producer."""
        return not self._batch_idle.is_set()

    async def wait_empty(self) -> None:
        # Called on revocation and stop (by Faust before its final commit): finish the batch in
        # progress (at stop it has finished already, see wait_batch_done), let the handler flush
        # what it keeps in memory, then Faust commits.
        await self._batch_idle.wait()
        handler = getattr(self.app, "satmon_batch_handler", None)
        if handler is not None:
            await self._settle()
            out = Outputs()
            handler.flush_all(out)
            await self._send(out)
        await super().wait_empty()

    async def _send(self, out: Outputs) -> list[asyncio.Future]:
        if not out:
            return []
        clock = getattr(getattr(self.app, "satmon_batch_handler", None), "stage_clock", None)
        futures = await send_outputs(out, self.app.producer._producer, clock)
        self._fast_sends.extend(futures)
        return futures

    def _on_durable(self, futures: list[asyncio.Future], nexts: dict[TP, int]) -> None:
        """Advance :attr:`_durable_next` to ``nexts`` once every one of ``futures`` succeeded."""
        durable = self._durable_next

        def advance(_: Any = None) -> None:
            if all(not f.cancelled() and f.exception() is None for f in futures):
                for tp, nxt in nexts.items():
                    if durable.get(tp, -1) < nxt:
                        durable[tp] = nxt

        if not futures:
            advance()
        else:
            gathered = asyncio.gather(*futures, return_exceptions=True)
            gathered.add_done_callback(advance)

    def durable_offsets(self) -> Mapping[TP, int]:
        """Next offsets per fast topic-partition whose effects the broker has acknowledged."""
        return self._durable_next

    async def _settle(self) -> None:
        """Wait until every send so far was answered, so durable offsets are up to date."""
        pending = [f for f in self._fast_sends if not f.done()]
        if pending:
            await asyncio.wait(pending)
        await asyncio.sleep(0)  # let the done callbacks run

    # -- the drain loop -------------------------------------------------------------------------

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - runs as a task
        handler: BatchHandler | None = getattr(self.app, "satmon_batch_handler", None)
        if handler is None:
            return await super()._drain_messages(fetcher)
        prepare = getattr(handler, "prepare", None)
        if prepare is not None:
            await prepare()
        pipeline_topics = handler.topics
        # more topics on the batched path, each with its own handler (SatmonApp.satmon_side_handlers)
        side: Mapping[str, Callable[[int, list[Any], Outputs], None]] = getattr(self.app, "satmon_side_handlers", {})
        fast_topics = pipeline_topics | side.keys()
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        read_offset = self._read_offset
        monitor = self.app.monitor
        inbound = monitor.stream_inbound_time if monitor is not None else {}
        acks_enabled_for = self.app.topics.acks_enabled_for
        out = Outputs()
        tick = getattr(handler, "tick", None)
        pop_inherited = getattr(handler, "pop_inherited_floors", None)
        next_tick = time.monotonic() + TICK_S
        ready = getattr(asyncio.get_running_loop(), "_ready", None)
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                records, active = await self._wait_next_records(1.0)
                await _let_others_run(ready)
                if tick is not None and time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + TICK_S
                    if self.flow_active and not self.suspend_flow.is_set():
                        self._batch_idle.clear()
                        try:
                            tick(out)
                            await self._send(out)
                        finally:
                            self._batch_idle.set()
                if records is None or self.should_stop or not records:
                    continue
                if not self.flow_active:
                    await self._rewind({tp: recs for tp, recs in records.items() if tp.topic in fast_topics})
                    await self.perform_seek()
                    continue
                generation = self.app.consumer_generation_id
                fast: dict[TP, list[Any]] = {}
                slow: list[tuple[TP, Any]] = []
                for tp, recs in records.items():
                    if active is not None and tp not in active and tp not in self._buffered_partitions:
                        continue
                    if monitor is not None:
                        monitor.track_tp_end_offset(tp, self.highwater(tp))
                    if tp.topic in fast_topics:
                        expected = read_offset[tp]
                        if expected is not None and recs[0].offset < expected:
                            recs = [r for r in recs if r.offset >= expected]
                        if recs:
                            fast[tp] = recs
                    else:
                        slow.extend((tp, r) for r in recs)
                if fast:
                    if self.suspend_flow.is_set() or generation != self.app.consumer_generation_id:
                        # A rebalance started: drop the batch, and rewind to it so it is fetched
                        # again (the rebalance's seek to committed offsets moves nothing where
                        # there is no commit yet).
                        await self._rewind(fast)
                        continue
                    self._batch_idle.clear()
                    try:
                        if side:
                            inputs = {tp: recs for tp, recs in fast.items() if tp.topic in pipeline_topics}
                            if inputs:
                                handler.handle(inputs, out)
                            for tp, recs in fast.items():
                                if tp.topic not in pipeline_topics:
                                    side[tp.topic](tp.partition, recs, out)
                        else:
                            handler.handle(fast, out)
                        futures = await self._send(out)
                        now = time.monotonic()
                        nexts = {}
                        for tp, recs in fast.items():
                            nxt = nexts[tp] = recs[-1].offset + 1
                            if self._fast_next.get(tp, -1) < nxt:
                                self._fast_next[tp] = nxt
                            read_offset[tp] = nxt
                            inbound[tp] = now
                            self.fast_records += len(recs)
                        self._on_durable(futures, nexts)
                        self.fast_batches += 1
                        if pop_inherited is not None:
                            self._take_inherited_floors(pop_inherited())
                    finally:
                        self._batch_idle.set()
                for tp, record in slow:
                    if not self.flow_active or generation != self.app.consumer_generation_id:
                        break
                    message = self._to_message(tp, record)
                    offset = message.offset
                    r_offset = read_offset[tp]
                    if r_offset is None or offset >= r_offset:
                        # Faust's own bookkeeping, unchanged: record gaps so acks can pass them.
                        if r_offset and offset - r_offset > 1 and acks_enabled_for(message.topic):
                            await self._add_gap(tp, r_offset + 1, offset)
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                        read_offset[tp] = offset
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise


class FastTransport(faust_aiokafka.Transport):
    """aiokafka transport whose consumer is :class:`FastConsumer` (and whose producer's requests
    are encoded by :func:`install_produce_encoder`)."""

    Consumer = FastConsumer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        install_produce_encoder()
        super().__init__(*args, **kwargs)
