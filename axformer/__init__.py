"""axformer: reproducible benchmark and ablation suite for AxFormer (arXiv 2010.03688)."""

__version__ = "0.1.0"
