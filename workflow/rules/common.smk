# Shared by all workflow files: config validation, path patterns, the variant grammar and input functions.
#
# A variant is a chain of step names (keys of the config's steps registry) joined by plus signs,
# applied in order and rooted at `finetune`: `finetune+distill+axformer+int8` = fine-tune, distill,
# AxFormer search, then int8 at measurement. Every prefix that ends in a checkpoint-producing step has a
# checkpoint folder; a step with command `quantize` (int8) writes none and may only come last.

import json
import os
import re
import shlex
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from axformer.bounds import check_finite_tree
from axformer.taskdata.data import check_task_files, task_file
from axformer.taskdata.splits import load_split_index
from axformer.encoders.models import check_model_spec
from axformer.records.results import model_name
from axformer.steps.stepargs import StepArgError, check_step_args
from axformer.taskdata.tasks import TASKS, TaskError, task_from_decl
from axformer.utils import ConfigError

SCHEMA = "../schemas/config.schema.yaml"


# ------------------------------------------------------------------------------------------ validation
def _config_error(key, msg):
    # One line and exit status 1: raising WorkflowError here would make Snakemake print its own frames of this
    # file after the message. Every call is at parse time, before the DAG, locks or any job, so nothing needs
    # cleaning up.
    print(f"config key '{key}': {msg}", file=sys.stderr)
    raise SystemExit(1)


def _schema_path(err):
    """'$.steps.foo.threads' -> 'steps.foo.threads' (the key a jsonschema error is about)."""
    path = getattr(err, "json_path", "$").lstrip("$").lstrip(".")
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = set(err.schema.get("properties", {}))
        extra = sorted(k for k in err.instance if k not in allowed)
        if extra:
            path = ".".join(p for p in (path, extra[0]) if p)
    elif err.validator == "required":
        missing = re.findall(r"'([^']+)' is a required property", err.message)
        if missing:
            path = ".".join(p for p in (path, missing[0]) if p)
    return path or "<top level>"


def _typed_cli_values():
    """Snakemake reads nested --config values (`split={search_frac: 0.2}`) as strings ('0.2'); parse each string
    leaf that came from the command line as YAML (safe_load: plain data only) so it meets the schema typed."""
    import yaml

    def walk(given, path):
        if isinstance(given, dict):
            for k, v in given.items():
                walk(v, (*path, k))
            return
        if isinstance(given, list):
            for i, v in enumerate(given):
                walk(v, (*path, i))
            return
        if not isinstance(given, str) or not path:
            return
        node = config
        try:
            for k in path[:-1]:
                node = node[k]
            if node[path[-1]] != given:
                return  # a profile value, not the command line's
        except (KeyError, IndexError, TypeError):
            return
        try:
            value = yaml.safe_load(given)
        except yaml.YAMLError:
            return  # left as text: the schema names the key if text is wrong there
        # typed scalars only ('0.2' -> 0.2, 'null' -> None, 'true' -> True); Snakemake already split {...} / [...]
        if not isinstance(value, (dict, list)):
            node[path[-1]] = value

    settings = getattr(workflow, "config_settings", None)
    walk(getattr(settings, "overwrite_config", None) or {}, ())


_typed_cli_values()

# JSON Schema's minimum / maximum let NaN through (every comparison with NaN is false) and YAML has .inf / .nan:
# refuse a non-finite number anywhere in the config first, naming its key (axformer/bounds.py, the numeric rule)
_non_finite = check_finite_tree(config)
if _non_finite:
    _config_error(_non_finite[0], f"must be a finite number (got {_non_finite[1]}); see the key's range in "
                  "workflow/schemas/config.schema.yaml.")

try:
    validate(config, schema=SCHEMA)
except WorkflowError as exc:
    import jsonschema

    err = exc.__context__  # snakemake raises its WorkflowError while handling jsonschema's error
    if not isinstance(err, jsonschema.exceptions.ValidationError):
        raise
    _config_error(_schema_path(err), f"{err.message} (keys and allowed values: workflow/schemas/config.schema.yaml)")

STEPS = config["steps"]
# What each CLI command does in the DAG: root (no parent), builds a checkpoint, writes decisions.json.
COMMANDS = {
    "finetune": {"checkpoint": True, "decisions": False},
    "approximate": {"checkpoint": True, "decisions": True},
    "distill": {"checkpoint": True, "decisions": False},
    "baseline": {"checkpoint": True, "decisions": False},
    "quantize": {"checkpoint": False, "decisions": False},
}


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

TASK_NAMES = config["tasks"]
MODEL_SPECS = {model_name(m): m for m in config["models"]}  # {model} wildcard -> spec for the CLI
SEEDS = list(range(config["seeds"]))


def variant_seeds(variant, model=None):
    """Seeds of a variant (or majority): max(seeds, seeds_per_variant[variant]); finetune gets the most of any,
    because every variant is paired with the finetune run of its own seed (verdicts). ``model`` (its folder
    name): seeds_per_model caps the count for that model (e.g. one seed of a 12-layer model on 2 cores)."""
    extra = config["seeds_per_variant"]
    n = max(config["seeds"], extra.get(variant, 0))
    if variant == "finetune":
        n = max([n, *extra.values()])
    caps = {model_name(m): c for m, c in config["seeds_per_model"].items()}
    if model is not None and model in caps:
        n = min(n, caps[model])
    return list(range(n))


def variant_runs_on(variant, task):
    """variant_tasks limits a variant to some tasks (e.g. a rule only defined for some); default every task."""
    return task in config["variant_tasks"].get(variant, TASK_NAMES)

# A measure.dtype other than fp32 (e.g. --config 'measure={dtype: fp16}') measures every run in that dtype:
# its results, logs and figures go to <dir>/<dtype>/, so they never overwrite the fp32 ones (the checkpoints
# are shared: steps do not depend on the measure dtype). Per-variant dtypes: a measure-time step's `dtype` arg.
_DTYPE_DIR = "" if config["measure"]["dtype"] == "fp32" else f"/{config['measure']['dtype']}"
RES = config["results_dir"].rstrip("/") + _DTYPE_DIR
CKPTS = config["checkpoints_dir"].rstrip("/")
LOGS = config["logs_dir"].rstrip("/") + _DTYPE_DIR
FIGS = config["figures_dir"].rstrip("/") + _DTYPE_DIR

# Path patterns ({variant} may contain '+').
RUN = "{task}/{model}/{variant}/seed{seed}"
CKPT_DIR = f"{CKPTS}/{RUN}/ckpt"            # the checkpoint folder (written by the CLI: temp dir + rename)
STEP_RECORD = f"{CKPTS}/{RUN}/step.json"    # the step's own record (train / search / distill blocks)
CKPT_DECISIONS = f"{CKPTS}/{RUN}/decisions.json"
METRICS = f"{RES}/{RUN}/metrics.json"
PREDICTIONS = f"{RES}/{RUN}/predictions.npz"  # written by measure / majority beside metrics.json
DECISIONS = f"{RES}/{RUN}/decisions.json"
TASK_DEF = f"{RES}/{{task}}/task_def.json"  # the resolved declaration of a task declared in the profile


# ------------------------------------------------------------------------------ the variant grammar
STEP_NAME = r"[A-Za-z0-9_]+"


def _alt(names):
    """Regex alternation of step names; a never-matching pattern when there are none."""
    return "(?:" + "|".join(re.escape(n) for n in sorted(names)) + ")" if names else "(?!)"


def steps_with(command):
    return [n for n, s in STEPS.items() if s["command"] == command]


def variant_ending_in(names):
    """Regex of variants whose last step is one of ``names`` (for rule-level wildcard_constraints)."""
    return rf"finetune(?:\+{STEP_NAME})*\+{_alt(names)}"


QUANT_STEPS = steps_with("quantize")
DECISION_STEPS = [n for n, s in STEPS.items() if COMMANDS[s["command"]]["decisions"]]

# Global wildcard constraints (applied in the Snakefile): {variant} contains '+' and is rooted at
# finetune, so it never swallows 'majority' or a path separator; {seed} is digits only.
WILDCARD_CONSTRAINTS = dict(
    task="|".join(re.escape(t) for t in TASKS),
    model=r"[^/]+",
    seed=r"\d+",
    variant=rf"finetune(?:\+{STEP_NAME})*",
)


def variant_steps(variant):
    return variant.split("+")


def checkpoint_variant(variant):
    """The variant whose checkpoint holds the weights: ``variant`` minus a trailing quantize step."""
    c = variant_steps(variant)
    return "+".join(c[:-1]) if c[-1] in QUANT_STEPS else variant


def last_step(wildcards):
    return STEPS[variant_steps(wildcards.variant)[-1]]


def parent_variant(wildcards):
    """The variant a step builds on: finetune+distill+axformer -> finetune+distill."""
    c = variant_steps(wildcards.variant)
    if len(c) < 2:
        raise WorkflowError(f"variant {wildcards.variant!r} has no parent (finetune is the root).")
    return "+".join(c[:-1])


def run_path(pattern, wildcards, variant):
    return pattern.format(task=wildcards.task, model=wildcards.model, variant=variant, seed=wildcards.seed)


def parent_ckpt(wildcards):
    return run_path(CKPT_DIR, wildcards, parent_variant(wildcards))


def match_decisions(wildcards):
    """baseline steps with `match`: decisions.json of parent+<match step>, else nothing."""
    m = last_step(wildcards)["match"]
    return [run_path(CKPT_DECISIONS, wildcards, f"{parent_variant(wildcards)}+{m}")] if m else []


def measured_ckpt(wildcards):
    return run_path(CKPT_DIR, wildcards, checkpoint_variant(wildcards.variant))


def baseline_ckpt(wildcards):
    return run_path(CKPT_DIR, wildcards, "finetune")


def step_records(wildcards):
    """step.json of every checkpoint on the way to the measured one (finetune first)."""
    c = variant_steps(checkpoint_variant(wildcards.variant))
    return [run_path(STEP_RECORD, wildcards, "+".join(c[: i + 1])) for i in range(len(c))]


def ckpt_decisions(wildcards):
    return run_path(CKPT_DECISIONS, wildcards, checkpoint_variant(wildcards.variant))


def has_decisions(variant):
    return variant_steps(checkpoint_variant(variant))[-1] in DECISION_STEPS


# --------------------------------------------------------------------------------- CLI arguments
def cli_flags(args):
    """{'accept_frac': 0.5, 'fast': True, 'sizes': [1, 32]} -> '--accept-frac 0.5 --fast --sizes 1 32'."""
    out = []
    for key, value in args.items():
        flag = shlex.quote("--" + str(key).replace("_", "-"))  # keys are schema-checked too; quote anyway
        if value is None or value is False:
            continue
        if value is True:
            out.append(flag)
        elif isinstance(value, (list, tuple)):
            out.append(" ".join([flag, *(shlex.quote(str(v)) for v in value)]))
        else:
            out.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(out)


def split_config(task):
    out = {**config["split"], **config["split_per_task"].get(task, {})}
    declared = config["task_defs"].get(task, {}).get("max_length")  # a declared task's length beats split's
    if declared is not None and "max_length" not in config["split_per_task"].get(task, {}):
        out["max_length"] = declared
    return out


def split_flags(wildcards):
    flags = cli_flags(split_config(wildcards.task))
    return flags + (" --allow-hub" if config["allow_hub"] else "")


def _task_args(step, task):
    return {**step["args"], **step.get("args_per_task", {}).get(task, {})}


def step_flags(wildcards):
    return cli_flags(_task_args(last_step(wildcards), wildcards.task))


def finetune_flags(wildcards):
    return cli_flags(_task_args(STEPS["finetune"], wildcards.task))


def match_flag(wildcards, input):
    return f"--match {shlex.quote(str(input.match))}" if input.match else ""


def quantize_flags(wildcards):
    """--quantize int8 ... for X+int8 (the quantize step's args), nothing otherwise."""
    name = variant_steps(wildcards.variant)[-1]
    args = {k: v for k, v in STEPS[name]["args"].items() if k != "dtype"}  # dtype: measure_flags
    return cli_flags(args) if name in QUANT_STEPS else ""


def task_def_input(wildcards):
    """The resolved declaration file of a task declared in the profile; none for a built-in task (the CLI has it)."""
    return [TASK_DEF.format(task=wildcards.task)] if wildcards.task in config["task_defs"] else []


def task_def_flag(wildcards, input):
    return f"--task-def {shlex.quote(str(input.task_def))}" if input.task_def else ""


def task_def_json(wildcards):
    """The declaration written to TASK_DEF: resolved (defaults filled in), keys sorted, so a change re-runs."""
    return json.dumps(TASKS[wildcards.task].decl, sort_keys=True)


def model_spec(wildcards):
    return shlex.quote(MODEL_SPECS[wildcards.model])


def data_dir(wildcards):
    return shlex.quote(config["data_dir"])


def ckpt_output(pattern):
    """A checkpoint folder output: directory(), temp() too when config temp_checkpoints."""
    out = directory(pattern)
    return temp(out) if config["temp_checkpoints"] else out


# Resources of the job that builds the last step of {variant} (per step, from the registry).
def step_threads(wildcards):
    return last_step(wildcards)["threads"]


def step_resource(key):
    return lambda wildcards: last_step(wildcards)[key]


def timing_threads(wildcards):
    """Snakemake threads of a `time` job: every local core when measure.exclusive (nothing runs beside a
    timing), else measure.threads. Executors that take no --cores (SLURM) get measure.threads here and the
    profile's set-threads."""
    m = config["measure"]
    try:
        cores = workflow.cores
    except WorkflowError:  # a remote executor has no local core count (snakemake-executor-plugin-slurm)
        cores = None
    cores = cores if isinstance(cores, int) else None
    return max(m["threads"], cores) if m["exclusive"] and cores else m["threads"]


def measure_flags(wildcards=None):
    """measure.* as CLI flags; a measure-time (quantize-command) last step's own `dtype` arg replaces
    measure.dtype for that variant (finetune+axformer+fp16, int8 against fp16: DESIGN §6)."""
    m = config["measure"]
    keys = ("device", "batch_sizes", "seq_len", "warmup", "min_iters", "min_seconds", "threads", "dtype", "passes",
            "pass_retries", "noise_max_other_cpu", "noise_max_steal", "pass_process")
    values = {k: m[k] for k in keys}
    if wildcards is not None:
        values["dtype"] = variant_dtype(wildcards.variant)
    return cli_flags(values) + " --memory-isolation " + ("on" if m["memory_isolation"] else "off")


def variant_dtype(variant):
    """The float dtype a variant is measured and timed in: its measure-time last step's `dtype` arg, else
    measure.dtype."""
    last = variant_steps(variant)[-1]
    default = config["measure"]["dtype"]
    return STEPS[last]["args"].get("dtype", default) if last in QUANT_STEPS else default


def step_device(wildcards):
    """--device of the job that builds the last step of {variant} (schema-checked, quoted all the same)."""
    return shlex.quote(last_step(wildcards)["device"])


# ------------------------------------------------------------------------------------------ targets
def run_targets(variants=None):
    """metrics.json (+ decisions.json where the checkpoint comes from an approximate step) of every run."""
    out = []
    for variant in variants if variants is not None else config["variants"]:
        for task in TASK_NAMES:
            if not variant_runs_on(variant, task):
                continue
            for model in MODEL_SPECS:
                for seed in variant_seeds(variant, model):
                    wc = dict(task=task, model=model, variant=variant, seed=seed)
                    out.append(METRICS.format(**wc))
                    if has_decisions(variant):
                        out.append(DECISIONS.format(**wc))
    if config["majority"]:  # span QA has no constant predictor
        out += [METRICS.format(task=t, model=m, variant="majority", seed=s)
                for t in TASK_NAMES if not TASKS[t].is_qa for m in MODEL_SPECS for s in variant_seeds("majority", m)]
    return out


def all_targets():
    out = run_targets()
    if config["report"]:
        out += [f"{RES}/summary.csv", f"{FIGS}/README.md", f"{RES}/verdicts.csv"]
    return out
