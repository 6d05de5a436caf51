"""The README is the user's contract: its commands and its configuration table must be real."""

from __future__ import annotations

import re

from shared.settings import Settings
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_every_setting_is_documented_in_the_readme():
    missing = [n for n in Settings.model_fields if f"SEGCAM_{n.upper()}" not in README]
    assert not missing, f"settings missing from the README's table: {missing}"


def test_readme_commands_exist_in_the_makefile_and_ci_runs_the_test_command():
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"^make (\w[\w-]*)", README, flags=re.M):
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"make {target} is in the README but not the Makefile"
    assert "make test" in README and "make test" in (ROOT / ".ci" / "run").read_text()


DOCS = {name: (ROOT / name).read_text() for name in ("README.md", "docs/performance.md", "docs/reliability.md")}
RESULTS = ROOT / "benchmarks" / "results"
TOP = ("api", "worker", "shared", "client", "stack", "training", "benchmarks", "tests", "models", "docs", ".ci")


def _cited_paths(text: str) -> set[str]:
    """Backticked repository paths; templates (`<job>`, `{a,b}`) name outputs, not files."""
    found = set()
    for token in re.findall(r"`([^`\s]+)`", text):
        if token.split("/")[0] in TOP and "/" in token and not re.search(r"[<{]", token):
            found.add(token)
    return found


def test_every_path_the_docs_cite_exists():
    missing = []
    for name, text in DOCS.items():
        for token in _cited_paths(text):
            path = ROOT / token
            if path.exists():
                continue
            # `shared/celery_app.task_message`: a function in a module
            module, _, attr = token.rpartition(".")
            source = ROOT / f"{module}.py"
            if attr.isidentifier() and source.exists() and re.search(rf"^def {attr}\b", source.read_text(), re.M):
                continue
            missing.append(f"{name}: {token}")
    assert not missing, f"the docs cite files that are not in the repository: {missing}"


def test_every_benchmark_run_the_docs_quote_is_kept():
    """A figure quoted from a run must stay checkable: its JSON (or the A/B's JSON) is committed."""
    missing = []
    for name, text in DOCS.items():
        for run in set(re.findall(r"\b(20\d{6}T\d{6}Z)\b", text)):
            if not list(RESULTS.glob(f"*{run}.json")):
                missing.append(f"{name}: {run}")
    assert not missing, f"runs quoted without their results file: {missing}"


def test_the_readme_quotes_the_run_that_latest_md_holds():
    heading = r"^# segcam benchmark, (\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)"
    stamp = re.search(heading, (RESULTS / "latest.md").read_text(), re.M)
    assert stamp, "benchmarks/results/latest.md lost its heading"
    run = "{}{}{}T{}{}{}Z".format(*stamp.groups())
    performance = DOCS["README.md"].split("## Performance", 1)[1]
    assert f"Latest run (`benchmarks/results/latest.md`, run {run}" in " ".join(performance.split())
