"""Metadata as a person reads it in the UI: accuracies in percent with two decimals, losses to four.

Still numbers (not text), so the UI keeps plotting them across materializations.
"""


def percent(fraction: float) -> float:
    """0.656499981880188 -> 65.65 (shown under a `_pct` key)."""
    return round(100 * float(fraction), 2)


def rounded(value: float, digits: int = 4) -> float:
    return round(float(value), digits)


def significant(value: float, digits: int = 4) -> float:
    """0.873112345 -> 0.8731, 24.56789 -> 24.57: a figure that is measured, not set, to what it means."""
    return float(f"{float(value):.{digits}g}")


def tiny(value: float) -> str:
    """1.0600000E-5 (how the UI plots a tiny float) -> "1.06e-05": text, for a setting nobody plots."""
    return f"{float(value):.3g}"
