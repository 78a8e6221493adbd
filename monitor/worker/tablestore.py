"""The worker's :class:`~monitor.pipeline.StateStore`: a Faust table's local store and changelog, for bytes.

Shell: the only module that reaches into Faust's table and store objects (and RocksDB through them).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from monitor.pipeline import Outputs

log = logging.getLogger(__name__)


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

    #: RocksDB's own memory, by the name satmon exports it under (``satmon_worker_store_memory_bytes``)
    ROCKSDB_MEMORY = (("memtables", "rocksdb.cur-size-all-mem-tables"),
                      ("block_cache", "rocksdb.block-cache-usage"),
                      ("table_readers", "rocksdb.estimate-table-readers-mem"))

    def memory(self) -> dict[str, int]:
        """RocksDB's memory summed over this worker's open databases of the table (one per
        partition): memtables, block cache in use, index and filter blocks of open files. Empty for
        the memory store, whose data is ordinary Python objects."""
        dbs = getattr(self._store, "_dbs", None)
        if dbs is None:
            return {}
        totals = dict.fromkeys((kind for kind, _ in self.ROCKSDB_MEMORY), 0)
        for db in list(dbs.values()):
            for kind, prop in self.ROCKSDB_MEMORY:
                try:
                    totals[kind] += db.property_int_value(prop) or 0
                except Exception:  # noqa: BLE001 - a database closed by a rebalance meanwhile
                    continue
        return totals

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
