"""``satmon worker``: run one stream-processing worker (Faust app, batched consumer path, HTTP).

With no broker configured the worker refuses to start unless ``--embedded`` is given, in which case
it starts the local Tansu broker itself (and wipes this worker's table state, which would be stale
against a fresh broker). ``satmon demo`` starts the broker once and then its workers with
``SATMON_BROKER`` set.
"""

from __future__ import annotations

import argparse
import logging
import shutil

HELP = "run one stream-processing worker (consumes the input topics, scores, serves /metrics)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from monitor.config import add_flags

    add_flags(parser, ("broker", "data_dir", "partitions", "store", "web_host", "web_port", "worker_id",
                       "log_level", "alertmanager_url", "checkpoint_interval_s", "at_risk_threshold",
                       "label_horizon_hours", "state_ttl_days", "state_cache_per_partition", "standby_replicas",
                       "model_checkpoint", "pseudonymise", "pseudonym_key_file", "tokens_file"))
    parser.add_argument("--embedded", action="store_true",
                        help="no broker configured: start the embedded Tansu broker in this process")
    parser.add_argument("--app-id", default="satmon",
                        help="consumer group and changelog prefix (default: satmon)")


def run(args: argparse.Namespace) -> int:
    from monitor.config import from_args
    from monitor.records.errors import ConfigError

    settings = from_args(args)
    if settings.malloc_trim_s > 0:
        from monitor.tuning import tune_malloc

        tune_malloc()   # before any thread starts (the broker watch, Faust's consumer thread)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    broker = None
    if settings.broker is None:
        if not args.embedded:
            raise ConfigError(["no broker configured: set SATMON_BROKER=kafka://host:port (or --broker), "
                               "or pass --embedded to start the local Tansu broker"])
        try:
            from monitor.worker.broker import EmbeddedBroker  # the embedded Tansu lifecycle (demo command)
        except ImportError as err:
            raise ConfigError([f"--embedded: the embedded broker is not available ({err}); "
                               "set SATMON_BROKER instead"]) from None

        broker = EmbeddedBroker(data_dir=settings.data_dir, partitions=settings.partitions)
        url = broker.start()
        settings = settings.with_broker(url)
        # A fresh embedded broker has no changelogs: local RocksDB state would be stale.
        shutil.rmtree(settings.data_dir / "worker", ignore_errors=True)

    from monitor.worker.app import FaustWorker, build_worker

    from monitor.tuning import tune_gc

    worker = build_worker(settings, app_id=args.app_id)
    tune_gc()
    print(f"satmon worker {worker.worker_id}: broker {settings.broker}, "
          f"http://{settings.web_host}:{settings.web_port}/metrics", flush=True)
    try:
        FaustWorker(worker.app, loglevel=settings.log_level.lower(), quiet=True,
                    redirect_stdouts=False).execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        if broker is not None:
            broker.stop()
    return 0
