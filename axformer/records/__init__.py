"""The run record (DESIGN §4): the typed Run and its blocks (record), the JSON Schemas every hand-over file is
checked against when written and read (record_schema), and run folders / writing metrics.json and step.json
(results).

May import: taskdata (task names), axformer.utils.
"""
