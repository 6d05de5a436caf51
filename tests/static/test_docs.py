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
