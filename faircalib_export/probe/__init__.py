"""Stage I: teacher probing of the position prior w̄ (see prior.py for its format)."""
