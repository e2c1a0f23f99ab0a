"""Small trained diffusion LMs that ship with the package (LLaDA- and Dream-style).

    tasks     synthetic task generator with disjoint train / calibration / held-out splits
    data      tokenizer and instruct-format batches (prompt, then an EOS-padded window)
    train     masked-diffusion trainer (LLaDA SFT objective), resumable and deterministic
    evaluate  exact-match accuracy decoded with the family's own commit policy
    card      model cards rendered from each checkpoint's training.json
    commands  the `tiny train` and `eval` CLI commands

The shipped checkpoints live in `faircalib_export/assets/models/` and resolve by name
(`llada-chain`, `dream-chain`) wherever a model path is accepted.
"""
