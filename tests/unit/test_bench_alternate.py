"""A side-by-side comparison runs its commits in A B, B A, ... order: a fixed order favoured
whichever commit ran first in each pair (``benchmarks/overhead_ab.py``)."""

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
