"""`fold`: turn a calibrated artifact into a deployable W4A4 model (see format.py)."""
