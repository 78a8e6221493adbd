"""Every Prometheus metric and collector (``metrics``) and the Alertmanager client (``alertmanager``).
"""
