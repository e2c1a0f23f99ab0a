"""Stage I: teacher probing of the position prior w̄.

    config    ProbeConfig, the λ0(t) schedules and sharpness scores (torch-free)
    prompts   prompt sources: task:NAME, GSM8K .jsonl (zero-shot CoT), text lines
    stage1    random-commit rollouts, the accumulator, aggregation into priors
    prior     the prior format Stage II reads (`Prior.position_weights`)
    artifact  PRIOR_DIR: priors, components, per-sample arrays, plot, manifest
    compare   Spearman / Pearson between priors (cross-corpus consistency)
    plots     the figures; commands.py holds the CLI verbs probe and probe-compare
"""
