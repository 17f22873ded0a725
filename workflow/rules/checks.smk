# Pre-run checks the schema cannot express (included after config.smk): tasks and their data files, split
# sizes, models, each step's args as its CLI step takes them, the variant grammar, optional extras. Each refuses
# in one line naming the config key (config.smk's _config_error), before the DAG, locks or any job.

from axformer.taskdata.data import check_task_files, task_file
from axformer.taskdata.splits import load_split_index
from axformer.encoders.models import check_model_spec
from axformer.records.results import model_name
from axformer.steps.stepargs import StepArgError, check_step_args
from axformer.taskdata.tasks import TASKS, TaskError, task_from_decl
from axformer.utils import ConfigError

QA_SPLIT_KEYS = ("squad_protocol", "squad_fractions", "doc_stride", "max_answer_len")


def _check_qa_task(task, data_dir):
    """SQuAD: the standard protocol needs train-v1.1.json (or the hub); the local protocol splits dev by article."""
    protocol = {**config["split"], **config["split_per_task"].get(task, {})}.get("squad_protocol", "standard")
    train_file = str(task_file(TASKS[task], "train", data_dir) or os.path.join(data_dir, "squad", "train-v1.1.json"))
    if protocol == "standard" and not config["allow_hub"] and not os.path.isfile(train_file):
        _config_error(f"split_per_task.{task}.squad_protocol",
                      f"protocol 'standard' needs {train_file} (SQuAD v1.1 train, not in the offline data folder); "
                      "set squad_protocol: local (dev-v1.1.json split by article), add the file, or set allow_hub: true.")


def _check_step_args(name, st):
    """args (and each task's args_per_task on top) as the CLI step would take them (axformer.steps.stepargs)."""
    for task, per_task in [(None, {}), *st["args_per_task"].items()]:
        try:
            check_step_args(st["command"], {**st["args"], **per_task}, allow_hub=config["allow_hub"])
        except StepArgError as exc:
            where = f"args_per_task.{task}" if exc.key in per_task else "args"
            _config_error(".".join(p for p in (f"steps.{name}.{where}", exc.key) if p), str(exc))
# ------------------------------------------------------------------------------------------ tasks
def _task_error_key(task, err):
    """The config key a task error is about: task_defs.<task>.<key> for a profile entry, else `tasks`."""
    if task in config["task_defs"]:
        return ".".join(p for p in ("task_defs", task, getattr(err, "key", None)) if p)
    return "tasks"


def _task_registry():
    """The built-in tasks plus the profile's task_defs (an entry with a built-in's name replaces it), each
    declaration checked (keys, columns, labels, metric against the label kind)."""
    out = dict(TASKS)
    for name, decl in config["task_defs"].items():
        try:
            out[name] = task_from_decl(name, decl)
        except TaskError as exc:
            _config_error(_task_error_key(name, exc), str(exc))
    return out


def _check_task_data(data_dir):
    """Every task of the profile is known and its files read as declared (missing file, unknown column, label
    outside the declared set, empty split), and its train file leaves a non-empty search split and train'."""
    for task in config["tasks"]:
        if task not in TASKS:
            _config_error("tasks", f"unknown task {task!r}: use a built-in one ({', '.join(sorted(BUILTIN_TASKS))}) "
                          "or declare it under task_defs.")
        if TASKS[task].is_qa:
            _check_qa_task(task, data_dir)
            continue
        try:
            rows = check_task_files(TASKS[task], data_dir, config["allow_hub"])
        except TaskError as exc:
            _config_error(_task_error_key(task, exc), str(exc))
        split = {**config["split"], **config["split_per_task"].get(task, {})}
        if split.get("search_rows"):  # a fixed search split (split index file): its train file must be this one
            per_task = "search_rows" in config["split_per_task"].get(task, {})
            key = f"split_per_task.{task}.search_rows" if per_task else "split.search_rows"
            # relative to the working directory, else to the repository (a run with --directory elsewhere)
            in_repo = os.path.join(workflow.basedir, split["search_rows"])
            if not os.path.isabs(split["search_rows"]) and not os.path.exists(split["search_rows"]) \
                    and os.path.exists(in_repo):
                split["search_rows"] = in_repo
                config["split_per_task"].setdefault(task, {})["search_rows"] = in_repo
            try:
                index = load_split_index(split["search_rows"], TASKS[task], data_dir)
            except ConfigError as exc:
                _config_error(key, str(exc))
            if split["search_max"] is not None and split["search_max"] < len(index.search):
                _config_error(key, f"task {task}: search_max {split['search_max']} would cut the "
                              f"{len(index.search)}-row split of {split['search_rows']}; raise search_max.")
            continue
        n_train = rows["train"]
        n_search = min(int(round(split["search_frac"] * n_train)), split["search_max"])
        if n_train >= 0 and (n_search < 1 or n_train - n_search < 1):
            key = f"split_per_task.{task}.search_frac" if "search_frac" in config["split_per_task"].get(task, {}) \
                else "split.search_frac"
            _config_error(key, f"task {task}: {task_file(TASKS[task], 'train', data_dir)} has {n_train} data rows, so "
                          f"search_frac {split['search_frac']} leaves an empty "
                          f"{'search split' if n_search < 1 else 'train split'}; add rows or change search_frac.")
    for task in config["split_per_task"]:
        if task not in TASKS:
            _config_error(f"split_per_task.{task}", f"unknown task {task!r} (built-in or declared under task_defs).")


BUILTIN_TASKS = TASKS
TASKS = _task_registry()  # from here on: the built-in tasks and the profile's declarations


def _check_config():
    """Cross-key checks the schema cannot express; each error names the key and a valid value."""
    if config.get("data_dir") is None:
        config["data_dir"] = os.environ.get("AXFORMER_DATA")
    if not config["data_dir"]:
        _config_error("data_dir", "not set: set it in the profile, with --config data_dir=PATH, or set AXFORMER_DATA.")
    data_dir = os.path.abspath(os.path.expanduser(config["data_dir"]))
    if not re.match(r"^[A-Za-z0-9_./][A-Za-z0-9_./+-]*$", data_dir):  # AXFORMER_DATA too: it reaches job commands
        _config_error("data_dir", f"{data_dir!r} has characters other than letters, digits and _ . / + -; use a "
                      "plain path (it is repeated in every job's command line).")
    if not os.path.isdir(data_dir):
        _config_error("data_dir", f"{data_dir} is not a folder; point it at the folder that holds glue/.")
    config["data_dir"] = data_dir

    _check_task_data(data_dir)
    for task, keys in config["split_per_task"].items():
        qa_only = sorted(set(keys) & set(QA_SPLIT_KEYS))
        if qa_only and not TASKS[task].is_qa:
            _config_error(f"split_per_task.{task}.{qa_only[0]}", "a SQuAD-only key; set it under split_per_task.squad.")

    for i, spec in enumerate(config["models"]):
        try:
            check_model_spec(spec, allow_hub=config["allow_hub"])
        except ConfigError as exc:
            _config_error(f"models[{i}]", str(exc))
    names = [model_name(m) for m in config["models"]]
    if len(set(names)) != len(names):
        _config_error("models", f"two specs map to the same folder name ({names}); keep one.")

    if STEPS["finetune"]["command"] != "finetune":
        _config_error("steps.finetune.command", "the root step `finetune` must have command: finetune.")
    for name, st in STEPS.items():
        if st["command"] == "finetune" and name != "finetune":
            _config_error(f"steps.{name}.command", "only the root step `finetune` may use command finetune.")
        if st["match"] is not None:
            if st["command"] != "baseline":
                _config_error(f"steps.{name}.match", "only baseline steps take `match`.")
            if st["match"] not in STEPS or not COMMANDS[STEPS[st["match"]]["command"]]["decisions"]:
                valid = sorted(n for n, s in STEPS.items() if COMMANDS[s["command"]]["decisions"])
                _config_error(f"steps.{name}.match", f"{st['match']!r} is not an approximate step (one of {valid}).")
        if st["device"] == "cpu" and st["gpu"] > 0:
            _config_error(f"steps.{name}.gpu", f"step {name!r} runs on device cpu but books {st['gpu']} GPU(s); "
                          "set gpu: 0, or device: cuda (or auto) to use the GPU.")
        if st["device"] != "cpu" and st["gpu"] < 1 and st["command"] != "quantize":
            _config_error(f"steps.{name}.gpu", f"step {name!r} runs on device {st['device']} but books no GPU: "
                          "it would run on cuda:0 unaccounted (many jobs at once); set gpu: 1, or device: cpu.")
        if st["command"] == "baseline" and "method" not in st["args"]:
            _config_error(f"steps.{name}.args.method", "baseline steps need args.method (the baselines/ method name).")
        _check_step_args(name, st)

    if config["measure"]["device"] == "cpu" and config["measure"]["gpu"] > 0:
        _config_error("measure.gpu", f"measure.device is cpu but measure.gpu is {config['measure']['gpu']}; "
                      "set gpu: 0, or device: cuda.")
    if config["measure"]["device"] != "cpu" and config["measure"]["gpu"] < 1:
        _config_error("measure.gpu", f"measure.device is {config['measure']['device']} but measure.gpu is 0: a "
                      "timing on the GPU must book it; set gpu: 1, or device: cpu.")

    for variant in config["variants"]:
        parts = variant.split("+")
        for i, name in enumerate(parts):
            if name not in STEPS:
                _config_error("variants", f"variant {variant!r} uses step {name!r}, which is not a key of `steps` "
                              f"(known steps: {', '.join(sorted(STEPS))}).")
            if i > 0 and name == "finetune":
                _config_error("variants", f"variant {variant!r}: finetune can only be the first step.")
            if not COMMANDS[STEPS[name]["command"]]["checkpoint"] and i != len(parts) - 1:
                _config_error("variants", f"variant {variant!r}: {name!r} writes no checkpoint, so it must be the "
                              "last step (e.g. finetune+axformer+int8).")
    _check_runtime_extra()


def _check_runtime_extra():
    """A variant ending in an ONNX Runtime int8 step needs the `ort` extra: stop before any job runs."""
    import importlib.util

    extras = {"int8_ort": ("ort", ("onnxruntime", "onnx", "onnxscript")),
              "int8_ov": ("ov", ("openvino", "nncf", "onnx", "onnxscript"))}
    used = {v.split("+")[-1] for v in config["variants"]}
    for name in sorted(used):
        mode = str(STEPS[name]["args"].get("quantize", "")) if STEPS[name]["command"] == "quantize" else ""
        for prefix, (extra, packages) in extras.items():
            missing = [p for p in packages if importlib.util.find_spec(p) is None]
            if mode.startswith(prefix) and missing:
                _config_error(f"steps.{name}.args.quantize", f"{mode!r} needs the optional packages "
                              f"{', '.join(missing)}; install them with `pip install -e \".[{extra}]\"`.")

    # seeds_per_model / variant_tasks may name models, variants and tasks a narrowed run leaves out (--config
    # models=[...]): those entries are unused; a task name must still be a task
    for variant, tasks in config["variant_tasks"].items():
        for t in tasks:
            if t not in TASKS:
                _config_error(f"variant_tasks.{variant}", f"unknown task {t!r} (built-in or declared under task_defs).")

    for variant in config["seeds_per_variant"]:
        if variant == "majority" and not config["majority"]:
            _config_error("seeds_per_variant.majority", "majority is false, so there is no majority row to seed; "
                          "drop the key or set majority: true.")
        if variant != "majority" and variant not in config["variants"]:
            _config_error(f"seeds_per_variant.{variant}", f"{variant!r} is not in `variants`; add it there or drop "
                          "the key.")


_check_config()
