"""Stage II: weighted layer-wise calibration (FAIR-Calib) and its baselines.

methods.py names each method's numerics and training; data.py builds calibration token
sequences; stage2.py runs the block-by-block loop; artifact.py saves and loads the
result as a directory that `fold` and the evaluators consume.
"""
