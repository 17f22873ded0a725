"""AxFormer's accuracy-driven search (DESIGN §3): the pruning / hard-attention search with its acceptance rules
and decision log (prune), the latency guard that rejects a removal that makes the model slower
(latency_guard), and the journal a killed search resumes from (journal).

May import: surgery, training, taskdata, measurement (the guard's interleaved timing), axformer.utils,
axformer.device, axformer.stats.
"""
