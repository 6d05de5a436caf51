"""A side-by-side comparison runs its commits in A B, B A, ... order: a fixed order favoured
whichever commit ran first in each pair (``benchmarks/overhead_ab.py``)."""

import os
import subprocess
import sys

from benchmarks import overhead_ab, run


class _Bench:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_rounds_reverse_the_order_every_other_time_and_each_runs_from_its_tree(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "ROOT", run.ROOT)  # alternate points ROOT at each tree; restored after
    trees = {"A": tmp_path / "a", "B": tmp_path / "b"}
    rows = {"A": [], "B": []}
    seen = []

    def measure(rev, n):
        seen.append((n, rev, run.ROOT))
        return {"round": n}

    bench = _Bench()
    overhead_ab.alternate(4, bench, trees, rows, measure)
    assert [(n, rev) for n, rev, _ in seen] == [(1, "A"), (1, "B"), (2, "B"), (2, "A"),
                                                (3, "A"), (3, "B"), (4, "B"), (4, "A")]  # fmt: skip
    assert all(root == trees[rev] for _, rev, root in seen)
    assert rows == {"A": [{"round": n} for n in (1, 2, 3, 4)], "B": [{"round": n} for n in (1, 2, 3, 4)]}
    assert bench.closed


def test_a_commits_environment_is_set_only_while_it_is_measured(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "ROOT", run.ROOT)
    monkeypatch.delenv("SEGCAM_AB_PROBE", raising=False)
    trees = {"A": tmp_path / "a", "B": tmp_path / "b"}
    seen = []
    overhead_ab.alternate(2, _Bench(), trees, {"A": [], "B": []},
                          lambda rev, n: seen.append((rev, os.environ.get("SEGCAM_AB_PROBE"))) or {},
                          {"A": {"SEGCAM_AB_PROBE": "on"}})  # fmt: skip
    assert seen == [("A", "on"), ("B", None), ("B", None), ("A", "on")]
    assert "SEGCAM_AB_PROBE" not in os.environ


def test_hidden_modules_fail_to_import_in_the_hidden_environment_only(tmp_path):
    env = {**os.environ, **overhead_ab.hiding(["PIL", "hiredis"], tmp_path)}
    code = "import redis.utils\ntry:\n import PIL\nexcept ImportError:\n PIL = None\n" \
           "print(PIL is None, redis.utils.HIREDIS_AVAILABLE)"  # fmt: skip
    hidden = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert hidden.stdout.split() == ["True", "False"]  # redis-py falls back to its Python parser
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert shown.stdout.split()[0] == "False"  # Pillow is installed with the project


def test_the_same_revision_twice_is_an_a_a_run_from_two_trees(tmp_path):
    """The noise a real comparison has to beat: two setups of the same code, named apart."""
    assert overhead_ab.labels(["abc", "def"]) == ["abc", "def"]
    names = overhead_ab.labels(["HEAD", "HEAD"])
    assert names == ["HEAD (A)", "HEAD (B)"]
    trees = [overhead_ab.worktree("HEAD", tmp_path, name) for name in names]
    try:
        assert trees[0] != trees[1] and all((t / "benchmarks" / "overhead_ab.py").exists() for t in trees)
    finally:
        for t in trees:
            subprocess.run(["git", "worktree", "remove", "--force", str(t)], cwd=run.ROOT, check=True)
