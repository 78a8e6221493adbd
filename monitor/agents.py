"""The worker's agent: ingest -> per-partition risk core -> outputs, one ``getmany`` batch at a time.

:class:`RiskPipeline` is the :class:`~monitor.fastpath.BatchHandler` that the batched consumer
hands satmon's three input topics to. For each batch it decodes every record (invalid ones become
``dead_letter.v1`` records with their origin and original bytes), feeds each partition's events to
that partition's :class:`~monitor.core.PartitionCore`, and queues, for the producer:

* ``risk_score.v1`` records on ``risk-scores`` (only the scores the core emits: material changes);
* the per-subscriber states the core reports dirty, written to the subscriber-state table's store
  and changelog (one record per changed subscriber per batch, not per event);
* every ``checkpoint_interval_s``, the partition's model checkpoint, to the model table.

The consumer acknowledges the batch's offsets only after all of that was handed to the producer.

Per-subscriber state lives in the core's in-process cache; the Faust table is its durable copy: the
core reads it back on a cache miss (``state_loader``) and after a rebalance or restart, when Faust's
recovery has rebuilt the table from its changelog.

Seams: ``observers`` get every processed batch (hot-spot windows, metrics, the at-risk view plug in
there) with :meth:`BatchObserver.on_batch`.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from monitor import events as ev
from monitor.fastpath import Outputs
from monitor.ingest import Ingest

log = logging.getLogger(__name__)

RISK_SCORES_TOPIC = "risk-scores"
DEAD_LETTER_TOPIC = "satmon-dead-letter"


class BatchObserver(Protocol):
    """Something that wants every processed batch (metrics, hot-spot windows, at-risk view)."""

    def on_batch(self, partition: int, events: Sequence[Any], scores: Sequence[ev.RiskScore],
                 dead_letters: Sequence[ev.DeadLetter], out: Outputs) -> None:
        """Called synchronously after the core processed ``events``; may add records to ``out``."""


class TableStore:
    """Direct, per-partition access to a Faust table's local store and its changelog, for bytes.

    Faust's ``table[key] = value`` costs one future, one buffer hop and one producer ``send`` per
    key; writing a batch's changes here costs a dict/RocksDB write plus one record appended to a
    producer batch. The records go to the changelog partition of the *source* partition, exactly
    where ``Table.on_key_set`` puts them, so Faust's recovery and standbys read them unchanged.
    """

    def __init__(self, table: Any) -> None:
        self.table = table
        self.changelog = table.changelog_topic.get_topic_name()

    @property
    def _store(self) -> Any:
        return self.table.data

    def get(self, partition: int, key: bytes) -> bytes | None:
        store = self._store
        if hasattr(store, "_db_for_partition"):
            return store._db_for_partition(partition).get(key)
        return store.data.get(key)

    def write(self, partition: int, changes: Mapping[bytes, bytes | None], out: Outputs) -> None:
        """Apply ``changes`` (``None`` deletes) locally and queue them for the changelog."""
        if not changes:
            return
        store = self._store
        if hasattr(store, "_db_for_partition"):
            import rocksdict

            db = store._db_for_partition(partition)
            batch = rocksdict.WriteBatch(raw_mode=True)
            for key, value in changes.items():
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
            db.write(batch)
            # The persisted offset tells recovery where local state ends; set it only once the
            # broker has the records (what Faust's Table._on_changelog_sent does).
            tp = self.table.changelog_topic_name
            out.on_sent(self.changelog, partition,
                        lambda offset, _s=store, _p=partition, _t=tp: _set_persisted(_s, _t, _p, offset))
        else:
            data = store.data
            key_partition = store._key_partition
            for key, value in changes.items():
                if value is None:
                    data.pop(key, None)
                    key_partition.pop(key, None)
                else:
                    data[key] = value
                    key_partition[key] = partition
        out.add_many(self.changelog, partition, changes.items())


def _set_persisted(store: Any, changelog: str, partition: int, offset: int) -> None:
    from faust.types import TP

    try:
        store.set_persisted_offset(TP(changelog, partition), offset)
    except Exception as exc:  # the partition may have been revoked meanwhile
        log.debug("persisted offset for %s/%s not recorded: %r", changelog, partition, exc)


def default_core_factory(settings: Any) -> Callable[..., Any]:
    """``make(partition, state_loader)`` building the real :class:`monitor.core.PartitionCore`."""
    from monitor.core import PartitionCore

    def make(partition: int, state_loader: Callable[[str], bytes | None]) -> Any:
        return PartitionCore(partition, settings=settings, state_loader=state_loader)

    return make


class RiskPipeline:
    """Batch handler: raw input records -> dead letters / core -> scores, states, checkpoints.

    Parameters
    ----------
    state_table, model_table:
        :class:`TableStore` over the subscriber-state table (key: subscriber id) and the model
        table (key: partition number as text).
    make_core:
        ``make_core(partition, state_loader) -> PartitionCore``.
    checkpoint_interval_s:
        How often each partition's model is checkpointed (also on revocation and shutdown).
    """

    topics = frozenset(ev.INPUT_TOPICS)

    def __init__(self, *, state_table: TableStore, model_table: TableStore,
                 make_core: Callable[..., Any], checkpoint_interval_s: float = 30.0,
                 worker_id: str | None = None, observers: Iterable[BatchObserver] = (),
                 score_partitioner: Callable[[bytes], int] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.state_table = state_table
        self.model_table = model_table
        self.make_core = make_core
        self.checkpoint_interval_s = checkpoint_interval_s
        self.worker_id = worker_id
        self.observers: list[BatchObserver] = list(observers)
        self.score_partitioner = score_partitioner
        self.clock = clock
        #: awaited by the consumer before the first batch (the app declares output topics)
        self.prepare: Callable[[], Awaitable[None]] | None = None
        self.cores: dict[int, Any] = {}
        self._checkpointed_at: dict[int, float] = {}
        self.ingest = Ingest(worker=worker_id)
        self.scores_emitted = 0
        self.batches = 0

    @property
    def processed(self) -> dict[str, int]:
        """Events decoded and handed to the cores, per stream."""
        return self.ingest.decoded

    @property
    def dead_lettered(self) -> dict[tuple[str, str], int]:
        """Dead letters per (stream, reason kind)."""
        return self.ingest.dead_lettered

    # -- cores ----------------------------------------------------------------------------------

    def core_for(self, partition: int) -> Any:
        core = self.cores.get(partition)
        if core is None:
            state = self.state_table

            def load(subscriber_id: str, _p: int = partition) -> bytes | None:
                return state.get(_p, subscriber_id.encode())

            core = self.make_core(partition, load)
            blob = self.model_table.get(partition, str(partition).encode())
            if blob is not None:
                core.restore(blob)
                log.info("partition %d: model restored from checkpoint (%d bytes)", partition, len(blob))
            else:
                log.info("partition %d: no model checkpoint, starting fresh", partition)
            self.cores[partition] = core
            self._checkpointed_at[partition] = self.clock()
        return core

    def _flush_core(self, partition: int, core: Any, out: Outputs, *, checkpoint: bool) -> None:
        dirty = core.take_dirty()
        if dirty:
            self.state_table.write(partition, {k.encode(): v for k, v in dirty.items()}, out)
        if checkpoint:
            self.model_table.write(partition, {str(partition).encode(): core.checkpoint()}, out)
            self._checkpointed_at[partition] = self.clock()

    # -- BatchHandler ---------------------------------------------------------------------------

    def handle(self, batch: Mapping[Any, list[Any]], out: Outputs) -> None:
        by_partition: dict[int, list[Any]] = {}
        dead: dict[int, list[ev.DeadLetter]] = {}
        decode_batch = self.ingest.decode_batch
        for tp, records in batch.items():
            events, letters = decode_batch(tp.topic, tp.partition, [(r.offset, r.key, r.value) for r in records])
            if events:
                by_partition.setdefault(tp.partition, []).extend(events)
            if letters:
                dead.setdefault(tp.partition, []).extend(letters)

        now = self.clock()
        for partition in by_partition.keys() | dead.keys():
            events = by_partition.get(partition, [])
            core = self.core_for(partition)
            scores = core.process_batch(events) if events else []
            for score in scores:
                key = score.subscriber_id.encode()
                p = self.score_partitioner(key) if self.score_partitioner else partition
                out.add(RISK_SCORES_TOPIC, p, key, ev.encode(score))
            self.scores_emitted += len(scores)
            letters = dead.get(partition, ())
            for letter in letters:
                key = None if letter.key_b64 is None else base64.b64decode(letter.key_b64)
                out.add(DEAD_LETTER_TOPIC, 0, key, ev.encode(letter))
            for observer in self.observers:
                observer.on_batch(partition, events, scores, letters, out)
            due = now - self._checkpointed_at.get(partition, now) >= self.checkpoint_interval_s
            self._flush_core(partition, core, out, checkpoint=due)
        self.batches += 1

    async def on_revoked(self, revoked: set[Any], out: Outputs) -> None:
        for partition in sorted({tp.partition for tp in revoked if tp.topic in self.topics}):
            core = self.cores.pop(partition, None)
            if core is not None:
                self._flush_core(partition, core, out, checkpoint=True)
                self._checkpointed_at.pop(partition, None)
                log.info("partition %d revoked: state flushed, model checkpointed", partition)

    def flush_all(self, out: Outputs, *, checkpoint: bool = True) -> None:
        """Flush every partition's dirty state (and checkpoint its model): used at shutdown."""
        for partition, core in self.cores.items():
            self._flush_core(partition, core, out, checkpoint=checkpoint)

