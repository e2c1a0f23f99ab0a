"""faircalib-export: FAIR-Calib W4A4 quantization and edge export for diffusion LLMs.

Data flow: probe -> calibrate -> fold -> export -> generate / validate / diagnose.
Each stage has its own module; `faircalib_export.cli` maps the CLI verbs onto them.
"""

__version__ = "0.1.0"
