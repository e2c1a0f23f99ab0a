"""Diagnostics of quantized students against the FP teacher (paper 5.4, appendix D).

    students  what a student is and how one is loaded (calibrated / folded / checkpoint)
    collect   recording passes: teacher-forced (students on teacher states), own decode
    metrics   flips, post-commit mismatch, stability lag, first false commit (numpy)
    report    per-sequence tallies -> the JSON report, prior correlation, seed groups
    plots     the figures
    run       `diagnose(...)` and `write_diagnose_dir(...)`; commands.py is the CLI verb
"""
