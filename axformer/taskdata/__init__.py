"""What a task is and where its rows come from (DESIGN §2, §8): task declarations (tasks), the text reader and
the data folder (data), the train' / search / dev split (splits), SQuAD v1.1 (squad), the task kind picked once
(taskkinds), each kind's per-sample loss (losses) and metric (metrics).

May import: axformer.utils, axformer.bounds. Nothing here knows about models' internals, searches or records.
"""
