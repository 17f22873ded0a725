"""What a variant costs (DESIGN §6): the latency / memory / size measurement of one (baseline, variant) pair
(measure), the timing-pass protocol every speedup comes from (timing), static cost: parameters, bytes, FLOPs
(cost), per-model memory in an isolated process (memory) and NVML's view of the GPU (nvml).

May import: encoders, compress (to build the runtime int8 variants it times), taskdata, surgery, axformer.utils,
axformer.device, axformer.stats, and steps.runs in timing.time_group only (the lineage of the checkpoints it
times; imported where it is called, since steps builds on this package).
"""
