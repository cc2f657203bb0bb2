"""`conceptvae serve` speed: a slider move through HTTP against the same edit in process.

One 1024 x 1024 photo (a SynthFace pasted into a noisy background, JPEG with EXIF, as in
benchmarks/edit.py) and the shipped model. The server is `conceptvae serve` in its own process
(its defaults: 2 edits at once, torch threads = cores / 2); the client is this process (httpx, one
keep-alive connection per client). Every time has a reference measured in the same run, in this
process with the same torch threads:

1. slider move, preview (what the page sends while dragging: ``{"strengths": {"Smiling": v}}``,
   the preview JPEG back), 1 client: p50/p95 against ``EditorService`` doing the same render and
   encode in process (the HTTP overhead) and against ``EditPipeline``'s own edit of the prepared
   photo at full size (``pipe(prepared, "Smiling+1.5")``, the CLI's edit without I/O);
2. the same with 4 concurrent clients (latency per request, and requests per second);
3. full-size edit (the download: JPEG with EXIF) against the in-process service;
4. uploads per second (read, detect, align, encode, store) against ``read_image`` +
   ``EditPipeline.prepare`` of the same bytes in process.

    python benchmarks/serve.py [--run synthfaces64] [--quick]

Prints a table and writes benchmarks/results/serve.json (the CPU and the load average at start
and end are recorded: the machine is shared).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
from conceptvae.edit import EditPipeline  # noqa: E402
from conceptvae.images import read_image  # noqa: E402
from conceptvae.serve import ServeLimits  # noqa: E402
from conceptvae.serve.app import EditorService  # noqa: E402

sys.path.insert(0, str(HERE))
from common import machine, write_report  # noqa: E402
from edit import _photo  # noqa: E402

EDIT = "Smiling+1.5"
TARGET_P50_MS, TARGET_P95_MS, TARGET_OVERHEAD = 60.0, 120.0, 1.25


def _ms(xs: list[float]) -> dict:
    a = np.asarray(xs) * 1000
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "n": len(xs)}


def _time(fn, n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def _strength(i: int) -> float:
    return round(0.5 + (i % 20) * 0.1, 2)  # 0.5 .. 2.4: a drag, never the same value twice in row


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(run: str, port: int) -> subprocess.Popen:
    import httpx

    exe = Path(sys.executable).with_name("conceptvae")
    proc = subprocess.Popen(
        [str(exe), "serve", run, "--port", str(port), "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    end = time.monotonic() + 300
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited:\n{proc.stdout.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not start in 300 s")


def main(argv: list[str] | None = None) -> dict:
    import httpx

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="synthfaces64")
    ap.add_argument("--quick", action="store_true", help="few repeats (a smoke test)")
    args = ap.parse_args(argv)
    n = 8 if args.quick else 60
    n_up = 3 if args.quick else 12

    info = machine()
    limits = ServeLimits()
    threads = max(1, (os.cpu_count() or 1) // limits.workers)  # what the server sets
    torch.set_num_threads(threads)
    print(f"machine: {info['cpu']}, {info['cores_available']} cores, load average at start "
          f"{', '.join(f'{x:.2f}' for x in info['load_average_at_start'])}")  # fmt: skip
    print(f"model {args.run}, photo 1024 x 1024 JPEG, torch threads {threads}, repeats {n}")

    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x010F] = "BenchCam"
    Image.fromarray(_photo(0)).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    data = buf.getvalue()

    # -- in process ---------------------------------------------------------------------------
    pipe = EditPipeline.from_pretrained(args.run)
    service = EditorService(pipe, limits, args.run)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "photo.jpg"
        path.write_bytes(data)
        prepared = pipe.prepare(path)
        pipe(prepared, EDIT)  # warm up
        t_pipe = _time(lambda i: pipe(prepared, "Smiling", 1.0 + _strength(i) * 0.1), n)
        t_prepare = _time(lambda i: pipe.prepare(read_image(path)), n_up)
    entry = service.store.get(service.upload(data, "photo.jpg")["id"])

    def local(i: int, size: str) -> None:
        terms = service.terms(None, 1.0, {"Smiling": _strength(i)})
        pixels = service.render(entry, terms, size=size)
        service.encode(entry, pixels, "auto", size == "full")

    local(0, "preview")
    t_local_preview = _time(lambda i: local(i, "preview"), n)
    t_local_full = _time(lambda i: local(i, "full"), max(4, n // 3))
    t_local_upload = _time(lambda i: service.upload(data, "photo.jpg"), n_up)

    # -- through HTTP ------------------------------------------------------------------------
    port = _free_port()
    proc = _start_server(args.run, port)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=120) as c:
            pid = c.post("/api/photos", files={"file": ("photo.jpg", data)}).json()["id"]

            def move(client, i: int, size: str = "preview") -> None:
                r = client.post(
                    f"/api/photos/{pid}/edit",
                    json={"strengths": {"Smiling": _strength(i)}, "size": size},
                )
                r.raise_for_status()

            move(c, 0)
            t_http_1 = _time(lambda i: move(c, i), n)
            t_http_full = _time(lambda i: move(c, i, "full"), max(4, n // 3))

            def upload(i: int) -> None:
                r = c.post("/api/photos", files={"file": (f"{i}.jpg", data)})
                r.raise_for_status()

            t_http_upload = _time(upload, n_up)

        def client_run(k: int) -> list[float]:
            with httpx.Client(base_url=base, timeout=120) as c:
                return _time(lambda i: move(c, i + k), n)

        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            per_client = list(ex.map(client_run, range(4)))
        wall_4 = time.perf_counter() - t0
        t_http_4 = [t for ts in per_client for t in ts]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    load_end = list(os.getloadavg())

    rows = {
        "slider_preview_http_1_client": _ms(t_http_1),
        "slider_preview_in_process_service": _ms(t_local_preview),
        "edit_pipeline_full_in_process": _ms(t_pipe),
        "slider_preview_http_4_clients": _ms(t_http_4),
        "full_size_edit_http": _ms(t_http_full),
        "full_size_edit_in_process_service": _ms(t_local_full),
    }
    rates = {
        "uploads_per_s_http": n_up / sum(t_http_upload),
        "uploads_per_s_in_process_service": n_up / sum(t_local_upload),
        "prepare_per_s_in_process_pipeline": n_up / sum(t_prepare),
        "slider_moves_per_s_4_clients": len(t_http_4) / wall_4,
    }
    p1 = rows["slider_preview_http_1_client"]
    ratios = {
        "http_overhead_preview": p1["p50"] / rows["slider_preview_in_process_service"]["p50"],
        "http_overhead_full": rows["full_size_edit_http"]["p50"]
        / rows["full_size_edit_in_process_service"]["p50"],
        "slider_vs_edit_pipeline": p1["p50"] / rows["edit_pipeline_full_in_process"]["p50"],
        "http_4_clients_vs_1_p50": rows["slider_preview_http_4_clients"]["p50"] / p1["p50"],
    }
    targets = {
        "p50_1_client_ms<=60": p1["p50"] <= TARGET_P50_MS,
        "p95_1_client_ms<=120": p1["p95"] <= TARGET_P95_MS,
        "http_overhead<=1.25": ratios["http_overhead_preview"] <= TARGET_OVERHEAD,
    }

    w = 44
    print()
    print(f"{'latency (ms)':<{w}} {'p50':>8} {'p95':>8} {'n':>5}")
    for k, v in rows.items():
        print(f"{k:<{w}} {v['p50']:>8.1f} {v['p95']:>8.1f} {v['n']:>5}")
    print()
    for k, v in rates.items():
        print(f"{k:<{w}} {v:>8.2f}")
    print()
    for k, v in ratios.items():
        print(f"{k:<{w}} {v:>8.2f}")
    print()
    for k, v in targets.items():
        print(f"target {k:<{w - 7}} {'met' if v else 'MISSED':>8}")
    print(f"load average at end: {', '.join(f'{x:.2f}' for x in load_end)}")
    return write_report(
        HERE / "results" / "serve.json",
        "serve",
        info,
        load_average_at_end=load_end,
        run=args.run,
        photo="1024 x 1024 JPEG q95, one SynthFace (benchmarks/edit.py _photo(0))",
        torch_threads=threads,
        server_workers=limits.workers,
        edit="strengths {'Smiling': 0.5 .. 2.4} (a drag); reference pipe(prepared, 'Smiling', s)",
        latency_ms=rows,
        rates=rates,
        ratios=ratios,
        targets_met=targets,
        quick=args.quick,
    )


if __name__ == "__main__":
    main()
