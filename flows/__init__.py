"""Prefect flows: one per stage, plus the end-to-end pipeline."""

import os

# A local ephemeral Prefect API on a busy 2-core machine can take longer than Prefect's default.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# OpenMP threads that sleep instead of spinning while they wait: on a shared 2-core machine a
# spinning torch thread starves its partner (measured: generate 10x slower). Read by libgomp
# when torch is first imported, so it has to be set before that.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
