"""Helpers the tests share (imported as ``support.<module>``): the Kafka harness, record builders,
Alertmanager, the browser, PromQL and API helpers. Fixtures are registered in ``tests/conftest.py``."""
