# Paths and input functions shared by the rule files (included after checks.smk): run paths, the variant
# grammar, parents, checkpoints, measured checkpoints, CLI flags, job resources and the run targets.
#
# A variant is a chain of step names (keys of the config's steps registry) joined by plus signs,
# applied in order and rooted at `finetune`: `finetune+distill+axformer+int8` = fine-tune, distill,
# AxFormer search, then int8 at measurement. Every prefix that ends in a checkpoint-producing step has a
# checkpoint folder; a step with command `quantize` (int8) writes none and may only come last.

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
            "pass_retries", "noise_max_other_cpu", "noise_max_steal", "pass_process", "round_order")
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


def in_group(path):
    """Whether a run path belongs to the timing group `group` names (TASK/MODEL/SEED), or every path when unset."""
    if not config.get("group"):
        return True
    task, model, seed = config["group"].split("/")
    return f"/{task}/{model}/" in path and f"/seed{seed}/" in path


def all_targets():
    """rule all's inputs: every run (+ the report), or only the runs of `group` (no report)."""
    if config.get("group"):
        out = [p for p in run_targets() if in_group(p)]
        if not out:
            _config_error("group", f"{config['group']!r} names no run of this profile; use TASK/MODEL/SEED with a "
                          "task of `tasks`, a model of `models` and a seed that some variant runs at.")
        return out
    out = run_targets()
    if config["report"]:
        out += [f"{RES}/summary.csv", f"{FIGS}/README.md", f"{RES}/verdicts.csv"]
    return out
