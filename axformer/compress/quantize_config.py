"""8-bit quantization's knobs and their defaults (:class:`QuantizeConfig`: backend, per-channel, modules kept
fp32), the one place they are set. Light on purpose: the CLI parser and the pre-run check read them without
importing torch; quantizing is :mod:`axformer.compress.quantize`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from axformer.utils import ConfigError


BACKENDS = ("auto", "torch_dynamic", "torchao", "bitsandbytes")


# Dotted name fragments kept in fp32 (see module docstring). Each entry matches a module whose qualified
# name contains it as whole dotted components: "classifier" matches "classifier" and "classifier.dense",
# "pooler.dense" matches "bert.pooler.dense". Every entry is also a valid transformers skip pattern
# (suffix or prefix match), so the same tuple serves :func:`bnb_config`.
DEFAULT_SKIP: tuple[str, ...] = ("classifier", "qa_outputs", "pooler.dense")


@dataclass
class QuantizeConfig:
    """How to quantize.

    backend: "auto" | "torch_dynamic" | "torchao" | "bitsandbytes".
    device: "cpu", "cuda", "cuda:1", ... or None for cuda when available else cpu. The model is moved there.
    skip_modules: name fragments of Linear layers kept fp32 (see ``DEFAULT_SKIP``).
    threshold: LLM.int8() outlier threshold (bitsandbytes only; 0 disables the fp16 outlier path).
    compute_dtype: "float32" keeps non-Linear parts and activations fp32; "float16" (bitsandbytes only)
        casts the rest of the model to fp16 first (the skipped head stays fp32: its Linear layers are cast
        back and take their input as fp32), LLM.int8()'s native setting, which also avoids
        bitsandbytes' per-call "inputs will be cast from float32 to float16" log line.
    per_channel: torch_dynamic only: one weight scale per output row (default) or one per tensor.
    inplace: quantize ``model`` itself instead of a deep copy (saves memory; the fp32 model is lost).
    """

    backend: str = "auto"
    device: str | None = None
    skip_modules: tuple[str, ...] = field(default_factory=lambda: DEFAULT_SKIP)
    threshold: float = 6.0
    compute_dtype: str = "float32"
    per_channel: bool = True
    inplace: bool = False

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"quantize backend {self.backend!r} is not one of {', '.join(BACKENDS)}.")
        if self.compute_dtype not in ("float32", "float16"):
            raise ConfigError(f"quantize compute_dtype {self.compute_dtype!r} must be 'float32' or 'float16'.")
        if self.threshold < 0:
            raise ConfigError(f"quantize threshold must be >= 0 (got {self.threshold}).")
        if isinstance(self.skip_modules, str):
            self.skip_modules = (self.skip_modules,)
        self.skip_modules = tuple(self.skip_modules)
