"""satmon: streaming, real-time customer-satisfaction monitor for telecom operators.

The package has one pure core (decoding, features, risk model, detectors, alert lifecycle) and thin
shells around it (Faust worker, CLI, Prometheus exporter, Alertmanager client). Shells import the
core, never the other way round.
"""

__version__ = "0.1.0"
