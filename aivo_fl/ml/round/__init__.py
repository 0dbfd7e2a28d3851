"""A federated round as four named steps: gather -> aggregate -> gate -> persist.

``gather`` (:mod:`.gather`) screens the offered updates, each exclusion with its reason, and reads
each needed delta file once, folding it into the strategy's running sum as it goes; privacy
accounting is in one place (:mod:`.accounting`: under learner sampling its draw decides which files
are read); ``aggregate`` (:mod:`.aggregate`) finishes the strategy, DP-wrapped when on, then runs
the server optimizer; :mod:`.candidate` composes these into
:func:`~aivo_fl.ml.round.candidate.build_candidate`. ``gate`` (:mod:`.gate`) judges the candidate;
:mod:`.judge` composes it with the server's curriculum anchor and backtracking (:mod:`.backtrack`).
Persisting is the caller's: :mod:`aivo_fl.operations.aggregation` (registry + model store) or a
benchmark (in memory). Options and privacy knobs are in :mod:`.options` (light: the CLI reads its
defaults there without loading torch).
"""
