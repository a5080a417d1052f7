"""Verdicts: inference, scoring new recordings, thresholds, metrics, reports, tables, plots."""
