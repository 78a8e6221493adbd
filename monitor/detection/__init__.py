"""Network detection: cell windows (``windows``), hot spots (``hotspots``), drift (``drift``), the
detector core of ``satmon detect`` (``detectors``), the alert lifecycle (``alerting``) and incidents
(``incidents``). Pure.
"""
