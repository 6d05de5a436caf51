"""The benchmark splits a saturation gap by stage: the limit and the jobs report the same stages
(the pipeline's own timings), so a run says whether segcam lost inside the pipeline or between jobs."""

from pathlib import Path

from benchmarks import run
from benchmarks.report import stage_split

ROOT = Path(__file__).resolve().parents[2]


def timings(pre, inf, cam, enc):
    return {"preprocess_ms": pre, "inference_ms": inf, "cam_ms": cam, "encode_ms": enc}


def test_the_limit_records_each_stage_of_the_images_it_ran():
    imgs = run.images((128, 96), n=2)
    got = run.limit(ROOT / "models" / "store", "shapes", imgs, 0.5, batch=1, overlap=True)
    assert set(got["stage_ms_p50"]) == set(run.STAGES)
    assert all(v > 0 for v in got["stage_ms_p50"].values())
    # Each image's stages add up to less than the loop's whole time per image would allow twice over.
    assert sum(got["stage_ms_p50"].values()) < 2 * got["ms_per_image"] + 50


def test_stage_medians_skip_a_stage_some_results_lack():
    rows = [timings(1, 10, 20, 5), timings(3, 30, 40, 7), timings(2, 20, 30, 6)]
    assert run.stage_p50(rows) == timings(2, 20, 30, 6)
    assert run.stage_p50([*rows, {"preprocess_ms": 9.0}]) == {"preprocess_ms": 3}  # pct's upper median of four
    assert run.stage_p50([]) == {}
    assert run.mean_stages([timings(1, 10, 20, 4), timings(3, 30, 40, 6)]) == timings(2, 20, 30, 5)


def test_the_report_sets_the_saturated_runs_stages_against_the_limits():
    section = {
        "limit": {"stage_ms_p50": timings(10, 100, 100, 40)},
        "segcam_saturated": {"stage_ms_p50": timings(10, 118, 112, 42)},
        "segcam_saturated_repeat": {"stage_ms_p50": timings(12, 122, 108, 44)},
    }
    text = " ".join(stage_split(section))
    assert "forward 120.0 against 100.0 ms" in text
    assert "Grad-CAM 110.0 against 100.0 ms" in text
    assert "label maps and PNGs 43.0 against 40.0 ms" in text
    assert "decode to Grad-CAM 1.15x the limit's" in text  # (11 + 120 + 110) / 210


def test_a_run_from_before_the_stages_were_recorded_reports_no_split():
    assert stage_split({"limit": {}, "segcam_saturated": {}, "segcam_saturated_repeat": {}}) == []
    half = {"limit": {"stage_ms_p50": timings(1, 1, 1, 1)}, "segcam_saturated": {"stage_ms_p50": {}}}
    assert stage_split(half) == []
