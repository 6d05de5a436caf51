"""The memory section's sampling plan: a full run samples every 200 jobs from a baseline at 200
(as every quoted run did); a short rehearsal (the GPU script's MEMORY_JOBS) still gets a
baseline and a last sample instead of stopping with no sample at 200 jobs."""

import pytest

from benchmarks import run


def test_a_full_run_samples_every_200_jobs_from_200():
    assert run.memory_step(2000) == 200
    assert run.memory_step(1000) == 200
    assert run.memory_step(400) == 200


@pytest.mark.parametrize("jobs", [16, 24, 100, 200, 399])
def test_a_short_run_has_a_baseline_sample_and_a_later_one(jobs):
    step = run.memory_step(jobs)
    assert step % 8 == 0  # the section submits jobs in rounds of 8
    done = -(-jobs // 8) * 8  # rounds of 8 until at least ``jobs``
    samples = [n for n in range(8, done + 1, 8) if n % step == 0]
    assert len(samples) >= 2  # a baseline (the first) and a later sample to compare


def test_fewer_than_two_rounds_are_refused():
    with pytest.raises(SystemExit):
        run.main(["--memory-jobs", "8", "--only", "memory"])
