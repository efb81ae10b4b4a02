"""Evaluations: functions from (model, tokens, spec) to measurements with coordinates."""
