"""What every CLI step shares (DESIGN §4): a checkpoint's lineage, splits, evaluation, saving and records (runs),
every step's arguments and parser (cliargs), a profile's step arguments checked before any job (stepargs), and
SLURM failures named with the key to raise (cluster). axformer.cli is these calls in a row.

May import: taskdata, encoders, surgery, training, search, compress, measurement, records, axformer.utils,
axformer.bounds, axformer.device. Only axformer.cli imports it.
"""
