"""The measurement's knobs and their defaults (:class:`MeasureConfig`: device, batch sizes, sequence length,
iterations, threads, dtype, timing passes and their noise limits), the one place they are set. Light on
purpose: the CLI parser and the workflow's pre-run check read it without importing torch (torch is imported
only where a default needs it: device "auto", threads); measuring is :mod:`axformer.measurement.measure`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from axformer.utils import ConfigError

ROUND_ORDERS = ("shuffle", "rotate", "fixed")  # the order of the models inside a timing round (time_interleaved)


@dataclass
class MeasureConfig:
    """How to time a model.

    - ``batch_sizes`` [1, 32]: 1 is the online / per-request latency the AxFormer paper reports; 32 is a
      throughput-oriented batch where matmul efficiency, not per-op overhead, dominates.
    - ``seq_len`` 128: the max_length the GLUE fine-tuning uses (data.tokenize), inputs are padded to it so
      every iteration does identical work.
    - ``warmup`` 10: the first calls pay for allocator growth, oneDNN/cuBLAS kernel selection and lazy
      initialisation; they are run but not recorded.
    - ``min_iters`` 30 and ``min_seconds`` 2.0: enough samples for a stable median / p90 and a long enough
      window that short bursts of load from other processes do not dominate; timing stops only once both
      hold for every model.
    - ``threads``: intra-op threads. Default = ``torch.get_num_threads()`` when the config is made; it is
      recorded in results and applied with ``torch.set_num_threads`` (restored afterwards) because CPU
      latency depends on it strongly; more threads than free cores makes OpenMP workers spin-wait on each
      other and can inflate latency 100x on a shared host.
    - ``device``: "cpu", "cuda", "cuda:N" or "auto" (cuda when torch sees a GPU, else cpu; resolved here).
    - ``dtype`` fp32: fp32 | fp16 | bf16, the float dtype baseline and float variants are cast to before
      evaluation and timing (int8 variants keep their own compute dtype). Every latency block records the
      dtypes actually held and the TF32 state.
    - ``memory_isolation`` True: CPU memory of the variant is measured in a subprocess of its own
      (memory.py); False: only the in-process tensor bytes (fast, for tests).
    - ``passes`` 3: independent timing passes (axformer.measurement.timing), each a fresh process; the speedup is their
      median. One job's figure did not reproduce in the next (int8 runtimes swung 13-24 % between jobs against
      1-4 % within-job intervals), so no figure rests on one process. The bench and base profiles use 5.
    - ``pass_retries`` 2: how many noisy passes a timing job may repeat (bounded, so a busy host cannot stall it;
      a noisy pass that cannot be repeated is counted and stays marked ``noisy``).
    - ``noise_max_other_cpu`` 0.10 and ``noise_max_steal`` 0.05: a pass is noisy when other processes used more
      than 10 % of the host's CPU time over its window, or the hypervisor stole more than 5 % (timing.HostWindow).
    - ``round_order`` shuffle: the order of the models inside each round of a timing pass (``ROUND_ORDERS``):
      a fresh seeded permutation per round, so no model always runs right after the same neighbour (a runtime's
      threads waking, or a cache another model evicted, would bias one model's readings every round);
      ``rotate`` (round r starts at model r, the order before) and ``fixed`` are kept for comparison
      (scripts/timing_order.py measures them against each other).
    - ``pass_process`` fresh: each pass in a new Python process; ``inline`` runs it in the caller (tests, quick
      looks: not independent, recorded as such).
    """

    batch_sizes: list[int] = field(default_factory=lambda: [1, 32])
    seq_len: int = 128
    warmup: int = 10
    min_iters: int = 30
    min_seconds: float = 2.0
    threads: int | None = None
    device: str = "cpu"
    dtype: str = "fp32"
    memory_isolation: bool = True
    passes: int = 3
    pass_retries: int = 2
    noise_max_other_cpu: float = 0.10
    noise_max_steal: float = 0.05
    pass_process: str = "fresh"
    round_order: str = "shuffle"

    def __post_init__(self) -> None:
        if self.device == "auto":
            import torch

            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        from axformer.device import DTYPES

        if self.dtype not in DTYPES:
            raise ConfigError(f"measure.dtype must be one of {', '.join(DTYPES)} (got {self.dtype!r}).")
        if self.threads is None:
            import torch

            self.threads = torch.get_num_threads()
        if isinstance(self.batch_sizes, int):
            self.batch_sizes = [self.batch_sizes]
        self.batch_sizes = list(self.batch_sizes)
        if not self.batch_sizes or any(not isinstance(b, int) or b < 1 for b in self.batch_sizes):
            raise ConfigError(f"measure.batch_sizes must be a non-empty list of integers >= 1 (got {self.batch_sizes}).")
        for name, high in (("seq_len", 8192), ("min_iters", 100_000), ("threads", 1024), ("passes", 100)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= high:
                raise ConfigError(f"measure.{name} must be an integer in [1, {high}] (got {v!r}).")
        for name, high in (("warmup", 10_000), ("pass_retries", 100)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= high:
                raise ConfigError(f"measure.{name} must be an integer in [0, {high}] (got {v!r}).")
        for name, high in (("min_seconds", 3600.0), ("noise_max_other_cpu", 1.0), ("noise_max_steal", 1.0)):
            v = getattr(self, name)
            # NaN fails both comparisons, so the range check also refuses it
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= high:
                raise ConfigError(f"measure.{name} must be a number in [0, {high}] (got {v!r}).")
        if self.pass_process not in ("fresh", "inline"):
            raise ConfigError(f'measure.pass_process must be "fresh" or "inline" (got {self.pass_process!r}).')
        if self.round_order not in ROUND_ORDERS:
            raise ConfigError(f"measure.round_order must be one of {', '.join(ROUND_ORDERS)} (got {self.round_order!r}).")
        if not isinstance(self.device, str) or not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f'measure.device must be "cpu" or "cuda" (got {self.device!r}).')

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")
