"""Aggregation: strategies behind one protocol (:mod:`.strategies`, DP as the ``DpClipped``
wrapper), server optimizers applied after the strategy (:mod:`.server_optimizers`), and the
streaming machinery they share (:mod:`.base`). Import from the submodules: the package itself
loads nothing, so :mod:`aivo_fl.ml.privacy.mechanism` can use :mod:`.base` without an import cycle."""
