"""Prefect tasks: one side effect each (load, validate, rate, fit, log, launch).

Caching rule: no task uses Prefect's result cache; every task is declared with
``cache_policy=NO_CACHE``. Work that must survive a restart is kept by hal's own
content-addressed stores (the rating, statement, generation and embedding caches, training
checkpoints), which key an item by what it is; Prefect's default policy would hash Python
arguments (DataFrames, settings objects) that it cannot key reliably. The one cached unit is a
whole pipeline stage (``flows/pipeline.py``), keyed by its parameters, the data and the code.
``tests/unit/test_task_rules.py`` holds every task to this.
"""
