"""The one training and evaluation loop (DESIGN §4): fine-tuning and distillation share train.train and
train.evaluate; batches builds dynamically padded batches and the model inputs.

May import: taskdata, axformer.utils, axformer.device.
"""
