"""Method comparison: calibrate, evaluate and diagnose several methods side by side."""

from .run import ABLATIONS, PRIOR_VARIANTS, CompareConfig, Entry, parse_entries, run_compare

__all__ = ["ABLATIONS", "PRIOR_VARIANTS", "CompareConfig", "Entry", "parse_entries",
           "run_compare"]
