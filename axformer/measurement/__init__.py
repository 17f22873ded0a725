"""What a variant costs (DESIGN §6): the latency / memory / size measurement of one (baseline, variant) pair
(measure), the timing-pass protocol every speedup comes from (timing), static cost: parameters, bytes, FLOPs
(cost, also the size block of a record), per-model memory in an isolated process (memory) and NVML's view of the GPU (nvml).

May import: records, encoders, compress (to build the runtime int8 variants it times), taskdata, surgery, axformer.utils,
axformer.device, axformer.stats. Never steps: timing.time_group is handed the rows of a lineage
(steps.runs.lineage_rows) by its caller.
"""
