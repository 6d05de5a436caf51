"""Render a benchmark run (the JSON that benchmarks.run writes) as Markdown tables."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from benchmarks.wake import describe


def _host(m: dict) -> str:
    """The host's wake-up cost, which overhead at low load pays at each of a job's ~ten process
    boundaries (`make trace`): what to read two hosts' overhead figures against."""
    if "loopback" not in m:
        return ""  # runs before it was recorded
    return f" Host: {describe(m['loopback'])} (`python -m benchmarks.wake`)."


_STAGE_NAMES = {"preprocess_ms": "decode and resize", "inference_ms": "forward", "cam_ms": "Grad-CAM",
                "encode_ms": "label maps and PNGs"}  # fmt: skip


def mean_stages(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each stage's mean over runs' ``stage_ms_p50``; only stages every run has."""
    return {s: statistics.mean(r[s] for r in runs) for s in (runs[0] if runs else {}) if all(s in r for r in runs)}


def stage_split(c: dict) -> list[str]:
    """Whether the saturated runs lost to the limit inside the pipeline (the same stages ran
    slower beside the gateway, Redis and the clients) or between jobs: each stage's p50 both
    ways. Runs from before the stages were recorded give nothing."""
    lim = c["limit"].get("stage_ms_p50")
    runs = [c[n].get("stage_ms_p50") for n in ("segcam_saturated", "segcam_saturated_repeat") if n in c]
    if not lim or not runs or not all(runs) or any(set(r) != set(lim) for r in runs):
        return []
    seg = mean_stages(runs)
    main = [s for s in ("preprocess_ms", "inference_ms", "cam_ms") if s in lim]
    ratio = sum(seg[s] for s in main) / sum(lim[s] for s in main)
    parts = ", ".join(f"{_STAGE_NAMES.get(s, s)} {_f(float(seg[s]))} against {_f(float(lim[s]))} ms" for s in lim)
    return [
        "",
        f"Per image, p50, the saturated runs against the limit runs (means of each): {parts}; "
        f"decode to Grad-CAM {ratio:.2f}x the limit's.",
    ]


def _f(v, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:  # NaN
            return "-"
        return f"{v:,.{digits}f}"
    return str(v)


def _check(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _code(code: dict) -> str:
    if not code.get("commit"):
        return "unknown (not a git checkout)"
    return f"commit {code['commit']}" + (" with local changes to tracked files" if code.get("local_changes") else "")


def markdown(run: dict) -> str:
    m = run.get("machine", {})
    s = run["sections"]
    args = run.get("args", {})
    out = [
        f"# segcam benchmark, {run.get('started', '')}",
        "",
        f"Machine: {m.get('cpu')}"
        + (f" ({', '.join(m['cpu_features']) or 'no avx2/avx512'})" if "cpu_features" in m else "")
        + f", {m.get('cores')} cores, device {m.get('device')}; torch {m.get('torch')}, "
        f"Python {m.get('python')}. Torch threads: {args.get('threads')} in every section; post-processing "
        f"threads: {run.get('postprocess_threads', 1)}; finishing lane (`SEGCAM_OVERLAP`): "
        f"{'on' if run.get('overlap') else 'off'}; {_f(args.get('seconds'), 0)} s per timed run. One worker "
        "unless stated." + (f" Code: {_code(run['code'])}." if "code" in run else "") + _host(m),
        "",
    ]
    targets = []
    for key, title in (("demo", "demo model (shapes U-Net, 96 px input)"),
                       ("realistic", "deeplabv3_mobilenet_v3_large, 384 px input, locally initialised")):  # fmt: skip
        c = s.get(f"compare_{key}")
        if not c:
            continue
        lim, low, d = c["limit"], c["segcam_low_load"], c["direct"]
        out += [
            f"## {title}",
            "",
            "| setup | workers x max batch | clients | images/s | p50 ms | p95 ms | p99 ms "
            "| overhead p50 / p99 ms | errors | timeouts | wrong results |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            f"| in-process limit (decode, preprocess, forward + Grad-CAM, encode) | 1 process | - "
            f"| {_f(lim['images_per_s'], 2)} | {_f(lim['ms_per_image'])} | - | - | - | - | - | - |",
        ]
        for label, name in (("segcam_low_load", "segcam over HTTP, low load"),
                            ("segcam_low_load_raw", "segcam over HTTP, low load, raw-socket client (no httpx)"),
                            ("segcam_low_load_poll", "segcam over HTTP, low load, submit then long-poll `GET ?wait`"),
                            ("segcam_saturated", "segcam over HTTP, saturated"),
                            ("segcam_saturated_repeat", "segcam over HTTP, saturated, again (after a limit run)"),
                            ("segcam_saturated_batch8", "segcam over HTTP, saturated, batching"),
                            ("segcam_2_workers", "segcam over HTTP, one worker per core")):  # fmt: skip
            r = c.get(label)
            if r is None:
                continue
            lat, ovh = r["latency_ms"], r["overhead_ms"]
            own = r.get("overlap", run.get("overlap"))  # the 2-worker row's workers decide their own lane
            lane = "" if own == run.get("overlap") else f", finishing lane {'on' if own else 'off'}"
            out.append(
                f"| {name}{lane} | {r['workers']} x {r['max_batch']} | {r['clients']} | {_f(r['throughput_per_s'], 2)} "
                f"| {_f(lat['p50'])} | {_f(lat['p95'])} | {_f(lat['p99'])} | {_f(ovh['p50'])} / {_f(ovh['p99'])} "
                f"| {r['errors']} | 0 | {r['wrong_results']} |"
            )
        kinds = f" ({', '.join(d['error_kinds'])})" if d.get("error_kinds") else ""
        died = "; server died" if d.get("server_died") else ""
        lat = d["latency_ms"]
        out += [
            f"| direct FastAPI endpoint (thread pool, shared model) | 1 process | {d['clients']} "
            f"| {_f(d['throughput_per_s'], 2)} | {_f(lat['p50'])} | {_f(lat['p95'])} | {_f(lat['p99'])} | - "
            f"| {d['errors']}{kinds}{died} | {d['timeouts']} | {d['wrong_results']} |",
            "",
            f"Saturation efficiency (segcam, one worker, saturated / in-process limit): **{c['efficiency']:.3f}**"
            + (
                " (two saturated runs, "
                + " and ".join(_f(c[n]["throughput_per_s"], 2) for n in ("segcam_saturated", "segcam_saturated_repeat"))
                + " images/s, each between two runs of the limit, "
                + ", ".join(_f(x, 2) for x in lim["samples_images_per_s"])
                + " images/s; the table shows the means; each run against its neighbours: "
                + " and ".join(f"{e:.3f}" for e in c["efficiency_per_pair"])
                + ")."
                if "samples_images_per_s" in lim
                else f" (limit {_f(lim['before_images_per_s'], 2)} images/s before the segcam runs and "
                f"{_f(lim['after_images_per_s'], 2)} right after the saturated one; the table shows their mean)."
                if "after_images_per_s" in lim
                else "."
            ),
            *stage_split(c),
            "",
        ]
        cold = [
            f"{_f(c[n]['first_job_overhead_ms'][0])} ms of overhead from the {who}"
            for n, who in (("segcam_low_load_raw", "raw-socket client"), ("segcam_low_load", "httpx client"))
            if c.get(n, {}).get("first_job_overhead_ms")
        ]
        if cold:
            out += [
                "Cold start: each segcam run starts a fresh stack, and each client's first job is an untimed "
                f"warm-up; the fresh stack's first job took {' and '.join(cold)} (httpx's first request also pays "
                "for the client library's own start).",
                "",
            ]
        if key == "realistic":
            targets.append(("saturation efficiency, realistic model, one worker", ">= 0.95", f"{c['efficiency']:.3f}",
                            c["efficiency"] >= 0.95))  # fmt: skip
        for client, run in (("httpx client", low), ("raw-socket client", c.get("segcam_low_load_raw"))):
            if run is None:
                continue
            ovh = run["overhead_ms"]
            targets.append((f"overhead p50 at low load ({key}, {client})", "<= 5 ms", f"{_f(ovh['p50'])} ms",
                            ovh["p50"] <= 5))  # fmt: skip
            targets.append((f"overhead p99 at low load ({key}, {client})", "<= 25 ms", f"{_f(ovh['p99'])} ms",
                            ovh["p99"] <= 25))  # fmt: skip
    over = [(k, s[f"overload_{k}"]) for k in ("demo", "realistic") if f"overload_{k}" in s]
    if over:
        out += [
            "## Overload: open-loop arrivals at several times capacity",
            "",
            "| model | offered rate | setup | offered | completed | refused (429) | refusal p50 / p99 ms "
            "| timeouts | errors | accepted but lost | wrong results | latency p50 / p99 ms |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for k, o in over:
            sg, d = o["segcam"], o["direct"]
            refusal = f"{_f(sg['refusal_ms']['p50'])} / {_f(sg['refusal_ms']['p99'])}"
            out.append(
                f"| {k} | {_f(o['rate_per_s'])}/s | segcam (queue bound 8) | {sg['offered']} "
                f"| {sg['accepted_completed']} | {sg['refused_429']} | {refusal} | 0 | {sg['other']} "
                f"| {sg['accepted_lost']} | {sg.get('wrong_results', '-')} | - |"
            )
            out.append(
                f"| {k} | {_f(o['rate_per_s'])}/s | direct FastAPI | {d['offered']} | {d['completed']} | - | - "
                f"| {d['timeouts']} | {d['errors']}{'; server died' if d.get('server_died') else ''} | - "
                f"| {d.get('wrong_results', '-')} | {_f(d['latency_ms']['p50'])} / {_f(d['latency_ms']['p99'])} |"
            )
            targets.append((f"refusal p99 under overload ({k})", "< 20 ms", f"{_f(sg['refusal_ms']['p99'])} ms",
                            sg["refusal_ms"]["p99"] < 20))  # fmt: skip
            targets.append((f"accepted jobs lost under overload ({k})", "0", str(sg["accepted_lost"]),
                            sg["accepted_lost"] == 0))  # fmt: skip
        out.append("")
    if g := s.get("gateway"):
        out += [
            "## Gateway alone (no workers)",
            "",
            f"{g['requests']} submissions of a {g['image_bytes'] // 1024} KB PNG over {_f(g['seconds'])} s, 16 "
            f"keep-alive connections, one API process: **{_f(g['accepted_per_s'], 0)} accepted/s**, "
            f"p50 {_f(g['p50_ms'])} ms, p99 {_f(g['p99_ms'])} ms; API resident memory {_f(g['api_rss_mb'])} MB; "
            f"torch loaded in the API: {'yes' if g['torch_loaded'] else 'no'}. Status codes: {g['status_codes']}.",
            "",
        ]
        targets += [
            ("gateway accepted submissions/s (64 KB class images)", ">= 500", _f(g["accepted_per_s"], 0),
             g["accepted_per_s"] >= 500),
            ("API resident memory", "<= 150 MB", f"{_f(g['api_rss_mb'])} MB", g["api_rss_mb"] <= 150),
            ("torch imported by the API", "no", "yes" if g["torch_loaded"] else "no", not g["torch_loaded"]),
        ]  # fmt: skip
    if mem := s.get("memory"):
        out += [
            "## Worker memory",
            "",
            f"{mem['jobs']} consecutive jobs (demo model): pool child RSS {_f(mem['start_mb'])} MB after "
            f"{mem.get('start_after', 200)} jobs, "
            f"{_f(mem['end_mb'])} MB at the end: drift **{_f(mem['drift_pct'], 2)} %**. "
            f"Samples (jobs, MB): {', '.join(f'{j}: {_f(r)}' for j, r in mem['samples_mb'])}.",
            "",
        ]
        targets.append(("worker RSS drift over the run", "<= 5 %", f"{_f(mem['drift_pct'], 2)} %",
                        abs(mem["drift_pct"]) <= 5))  # fmt: skip
        if gpu := mem.get("gpu"):
            drift = gpu["drift_pct"]
            out += [
                f"GPU memory of the pool child (driver's view, allocator reserve included): {_f(gpu['start_mb'], 0)} "
                f"MB after {mem.get('start_after', 200)} jobs, {_f(gpu['end_mb'], 0)} MB at the end: "
                f"drift **{_f(drift, 2)} %**. Samples (jobs, "
                f"MB): {', '.join(f'{j}: {_f(r, 0)}' for j, r in gpu['samples_mb'])}.",
                "",
            ]
            targets.append(("worker GPU memory drift over the run", "flat (<= 5 %)", f"{_f(drift, 2)} %",
                            drift is not None and abs(drift) <= 5))  # fmt: skip
    if rows := s.get("batching"):
        base_lim = rows[0]["limit"]["images_per_s"]
        base_seg = rows[0]["segcam"]["throughput_per_s"]
        out += [
            f"## Batch sizes (realistic model, {m.get('device')})",
            "",
            "| max batch | in-process images/s | x batch 1 | segcam images/s | x batch 1 | mean batch formed "
            "| segcam p50 / p99 ms | clients |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lim, seg = r["limit"], r["segcam"]
            out.append(
                f"| {r['batch']} | {_f(lim['images_per_s'], 2)} | {lim['images_per_s'] / base_lim:.2f} "
                f"| {_f(seg['throughput_per_s'], 2)} | {seg['throughput_per_s'] / base_seg:.2f} "
                f"| {_f(seg['mean_batch'], 2)} | {_f(seg['latency_ms']['p50'])} / {_f(seg['latency_ms']['p99'])} "
                f"| {seg['clients']} |"
            )
        out.append("")
        if str(m.get("device", "")).startswith("cuda"):
            by = {r["batch"]: r["segcam"]["throughput_per_s"] for r in rows}
            if 1 in by and 8 in by:
                targets.append(("GPU: batch 8 over batch 1, realistic model, fp32 CAM (segcam)", ">= 2x",
                                f"{by[8] / by[1]:.2f}x", by[8] / by[1] >= 2))  # fmt: skip
    if rows := s.get("overlap"):
        out += [
            f"## Finishing lane off and on (`SEGCAM_OVERLAP`; realistic model, {m.get('device')})",
            "",
            "A batch's CPU half (label maps, statistics, PNGs, storing the results) on a thread of its own while "
            "the next batch computes. Off and on alternate within the run.",
            "",
            "| workers | max batch | lane | in-process images/s | x lane off | segcam images/s | x lane off "
            "| segcam p50 / p99 ms | clients |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        off = {(r.get("workers", 1), r["batch"]): r for r in rows if not r["overlap"]}
        for r in rows:
            lim, seg = r["limit"], r["segcam"]
            base = off.get((r.get("workers", 1), r["batch"]), r)
            gain = seg["throughput_per_s"] / base["segcam"]["throughput_per_s"]
            in_process = (
                f"{_f(lim['images_per_s'], 2)} | {lim['images_per_s'] / base['limit']['images_per_s']:.2f}"
                if lim
                else "- | -"
            )
            out.append(
                f"| {r.get('workers', 1)} | {r['batch']} | {'on' if r['overlap'] else 'off'} | {in_process} "
                f"| {_f(seg['throughput_per_s'], 2)} | {gain:.2f} "
                f"| {_f(seg['latency_ms']['p50'])} / {_f(seg['latency_ms']['p99'])} | {seg['clients']} |"
            )
        out.append("")
    if prec := s.get("precision"):
        out += [
            "## Forward pass: memory layout and autocast (realistic model)",
            "",
            "| batch | layout | dtype | forward ms | argmax agreement with fp32 |",
            "|---|---|---|---|---|",
        ]
        out += [
            f"| {r.get('batch', 1)} | {r['layout']} | {r['dtype']} | {_f(r['forward_ms'])} "
            f"| {r['mask_agreement']:.4f} |"
            for r in prec
        ]
        out.append("")
    if bb := s.get("bf16_backbone"):
        out += [
            "## Whole jobs with `SEGCAM_BF16_BACKBONE` (autocast before the CAM's target layer; the CAM's part fp32)",
            "",
            "| model | fp32 ms/job | bf16 backbone ms/job | speed-up | mask agreement | CAM max abs diff "
            "| same class |",
            "|---|---|---|---|---|---|---|",
        ]
        out += [
            f"| {r['model']} | {_f(r['fp32_job_ms'])} | {_f(r['bf16_backbone_job_ms'])} | {r['speedup']:.2f}x "
            f"| {r['mask_agreement']:.4f} | {r['cam_max_abs_diff']:.4f} | {r['same_class']:.2f} |"
            for r in bb
        ]
        out.append("")
    if targets:
        out += ["## Targets", "", "| target | goal | measured | |", "|---|---|---|---|"]
        out += [f"| {name} | {goal} | {got} | {_check(ok)} |" for name, goal, got, ok in targets]
        out.append("")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown(json.loads(Path(sys.argv[1]).read_text())))
