"""Shared constants of the tiny-model tests (imported by module name, like runtime_mocks)."""

from faircalib_export.tiny.config import TrainConfig

# A one-block model that trains in milliseconds.
MICRO = TrainConfig(hidden_size=48, intermediate_size=144, num_layers=1, num_heads=2,
                    num_kv_heads=2, batch_size=8, steps=6, warmup_steps=2, lr=3e-3,
                    threads=1, checkpoint_every=2, log_every=2, monitor_every=0,
                    eval_examples=4)
