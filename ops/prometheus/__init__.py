"""Prometheus configuration, alert rules (YAML beside this file) and the server the project runs
itself (:mod:`ops.prometheus.server`)."""
