"""`fold`: turn a calibrated artifact into a deployable W4A4 model.

    fold      fold_artifact: site scales into norms and rows, W diag(c) P^-1 into packed
              int4 codes with per-channel scales (float64), written as a deploy directory
    deployed  the deploy directory's format (deploy.json + weights.safetensors) and its
              PyTorch reference model
    pack      int4 and FP4 (E2M1) nibble packing (element 2j in bits 0-3); FP4 folds keep
              their block scales as E4M3 / E8M0 bytes (docs/fp4.md)
"""
