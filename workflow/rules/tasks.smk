# Task declarations (axformer/taskdata/tasks.py): a task declared in the profile's task_defs gets its resolved
# declaration written here, once per task; finetune and majority read it (--task-def) and the fine-tuned
# checkpoint records it, so every later step reads the task as it was fine-tuned. Built-in tasks need no file.


rule task_def:
    output:
        TASK_DEF,
    params:
        decl=task_def_json,
    localrule: True
    run:
        from axformer.utils import atomic_write_text

        atomic_write_text(output[0], json.dumps(json.loads(params.decl), indent=2, sort_keys=True) + "\n")
