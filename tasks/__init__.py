"""Prefect tasks: one side effect each (load, validate, rate, fit, log, launch)."""
