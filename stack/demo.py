"""The end-to-end demo: real jobs through the real stack, results written to disk.

Generates scenes with the demo model's generator, submits them all at once over HTTP,
waits for every job, and writes each job's input, mask, heatmap, overlay and result JSON,
plus a contact sheet and a summary table.
"""

from __future__ import annotations

import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from client.http import ARTIFACTS, SegcamClient, artifact_file
from training.shapes import make_scene

# (seed, size, method, class): a spread of sizes and every Grad-CAM method.
DEMO_JOBS = [
    (1, (320, 240), "gradcam", None),
    (2, (256, 256), "gradcam++", None),
    (3, (480, 320), "hirescam", None),
    (4, (256, 384), "xgradcam", None),
    (5, (300, 300), "layercam", None),
    (6, (400, 300), "eigencam", None),
    (7, (512, 512), "gradcam", "circle"),
    (8, (320, 320), "gradcam", "triangle"),
]


def demo_images(n: int) -> list[tuple[str, bytes, str, str | None]]:
    out = []
    for i in range(n):
        seed, size, method, cls = DEMO_JOBS[i % len(DEMO_JOBS)]
        seed += 1000 * (i // len(DEMO_JOBS))
        scene = make_scene(20_000_000 + seed, size=256)
        img = scene.image.resize(size, Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, "PNG")
        out.append((f"scene{i:02d}_{method.replace('+', 'p')}", buf.getvalue(), method, cls))
    return out


def run_demo(base_url: str, out_dir: Path, n: int = 8) -> list[dict]:
    out_dir.mkdir(parents=True, exist_ok=True)
    images = demo_images(n)
    rows: list[dict] = []
    with SegcamClient(base_url) as client:
        started = time.perf_counter()

        def one(item: tuple[str, bytes, str, str | None]) -> dict:
            name, data, method, cls = item
            accepted = client.submit(data, method=method, target_class=cls, filename=f"{name}.png")
            job = client.wait(accepted["id"], timeout=600)
            d = out_dir / name
            d.mkdir(exist_ok=True)
            (d / "input.png").write_bytes(data)
            (d / "result.json").write_text(json.dumps(job, indent=2) + "\n")
            if job["status"] == "succeeded":
                for a in ARTIFACTS:
                    (d / artifact_file(job, a)).write_bytes(client.download(job["id"], a))
            return {"name": name, "job": job, "dir": d}

        with ThreadPoolExecutor(max_workers=len(images)) as pool:
            rows = list(pool.map(one, images))
        wall = time.perf_counter() - started
    write_summary(out_dir, rows, wall)
    return rows


def write_summary(out_dir: Path, rows: list[dict], wall_s: float) -> None:
    lines = [
        f"# segcam demo: {len(rows)} jobs in {wall_s:.1f} s",
        "",
        "| job | status | size | method | explained class | energy in mask | queue wait ms | compute ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    tiles = []
    for r in rows:
        job = r["job"]
        res = job.get("result") or {}
        ex = res.get("explanation") or {}
        t = res.get("timings_ms") or {}
        size = f"{res['image']['width']}x{res['image']['height']}" if res else "-"
        lines.append(
            f"| {r['name']} | {job['status']} | {size} | {job['method']} | {ex.get('class_label') or '-'} "
            f"| {'-' if ex.get('energy_in_mask') is None else ex['energy_in_mask']} "
            f"| {t.get('queue_wait_ms', '-')} | {t.get('total_ms', '-')} |"
        )
        if job["status"] == "succeeded":
            files = ["input.png", *(artifact_file(job, a) for a in ARTIFACTS)]
            tiles.append([Image.open(r["dir"] / f).convert("RGB") for f in files])
    (out_dir / "summary.md").write_text("\n".join(lines) + "\n")
    if tiles:
        cell, gap = 160, 8  # each image fitted and centred in its cell; rows and columns kept apart
        step = cell + gap
        sheet = Image.new("RGB", (step * 4 + gap, step * len(tiles) + gap), "white")
        for y, row in enumerate(tiles):
            for x, im in enumerate(row):
                im.thumbnail((cell, cell))
                sheet.paste(im, (gap + x * step + (cell - im.width) // 2, gap + y * step + (cell - im.height) // 2))
        sheet.save(out_dir / "contact_sheet.png")
    print("\n".join(lines))
    print(f"\nwrote {out_dir}/<job>/{{input,mask,heatmap,overlay}}.png, result.json, summary.md, contact_sheet.png")
