"""Sub-commands of ``satmon``: one module each (see :mod:`monitor.cli`)."""
