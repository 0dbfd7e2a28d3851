"""A federated round as four named steps: gather -> aggregate -> gate -> persist.

``gather`` (:mod:`.gather`) screens the offered updates, each exclusion with its reason; privacy
accounting sits after it, in one place (:mod:`.accounting`); ``aggregate`` (:mod:`.aggregate`) runs
the strategy, DP-wrapped when on, then the server optimizer; :mod:`.candidate` composes these into
:func:`~aivo_fl.ml.round.candidate.build_candidate`. ``gate`` (:mod:`.gate`) judges the candidate.
Persisting is the caller's: :mod:`aivo_fl.operations.aggregation` (registry + model store) or a
benchmark (in memory). Options and privacy knobs are in :mod:`.options` (light: the CLI reads its
defaults there without loading torch).
"""
