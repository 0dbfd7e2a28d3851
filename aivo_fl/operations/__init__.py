"""Operator workflows: the ML core joined to the registry and the model store.

Dagster assets and the `aivo-fl` command line both call these functions, so a round run from
the UI and one run from a terminal take the same code path. No Dagster in here.
"""
