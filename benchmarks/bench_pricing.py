"""Benchmark of pixelgov's pricing: quote throughput and `pixelgov price` cold start.

    python benchmarks/bench_pricing.py          # full run
    python benchmarks/bench_pricing.py --quick  # a fast smoke run

1. Validated quotes per second of `pricing.quote` on a mix of requests (every endpoint,
   presets, custom sizes, 1–4 images), best of N runs, next to a baseline measured in
   this same process: a bare sketch of the same math (one pydantic_core SchemaValidator
   with a few int fields, a ceil, a Decimal multiply). Target: ≥ 100,000 quotes/s.
2. Cold start: median wall time of `pixelgov price fal-ai/flux/dev` (the console script
   next to this interpreter) against `python -c "import click, pydantic"`, runs
   interleaved. Target: ≤ 1.5× the baseline.

Prints numbers only; it never fails on them (timings are not tests).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic_core import SchemaValidator
from pydantic_core import core_schema as cs

import pricing
from pricing import default_book

QUOTES_TARGET = 100_000
COLD_START_TARGET = 1.5


def request_mix(count: int, seed: int = 2026) -> list[tuple[str, dict[str, Any]]]:
    """A reproducible mix: generate and transform endpoints, presets and custom sizes, 1–4 images,
    with the parameters a caller sends that do not change the price; some upscales."""
    rng = random.Random(seed)
    book = default_book()
    generate = sorted(p for p, e in book.endpoints.items() if e.operation in ("generate", "transform"))
    upscale = sorted(p for p, e in book.endpoints.items() if e.operation == "upscale")
    presets = sorted(book.presets)
    customs = [{"width": rng.randrange(256, 2049, 8), "height": rng.randrange(256, 2049, 8)} for _ in range(64)]
    mix: list[tuple[str, dict[str, Any]]] = []
    for i in range(count):
        kind = i % 10
        if kind == 9:
            mix.append((rng.choice(upscale), {"input_size": rng.choice(customs), "scale": rng.choice((2, 4))}))
            continue
        body: dict[str, Any] = {
            "prompt": "a red fox in the snow",
            "image_size": rng.choice(customs) if kind < 4 else rng.choice(presets),
            "num_images": rng.randint(1, 4),
        }
        if kind % 3 == 0:
            body.update(num_inference_steps=rng.randint(1, 100), guidance_scale=3.5, seed=rng.randrange(2**31))
        mix.append((rng.choice(generate), body))
    return mix


def baseline_mix(mix: list[tuple[str, dict[str, Any]]]) -> list[tuple[Decimal, dict[str, int]]]:
    """The same requests as the baseline sees them: sizes resolved, a rate, three ints."""
    book = default_book()
    out = []
    for endpoint, body in mix:
        entry = book.endpoints[endpoint]
        if entry.operation == "upscale":
            size, n = body["input_size"], 1
            size = {"width": size["width"] * body["scale"], "height": size["height"] * body["scale"]}
        else:
            size = body["image_size"]
            size = size if isinstance(size, dict) else dict(zip(("width", "height"), book.presets[size]))
            n = body["num_images"]
        out.append((entry.rate, {"width": size["width"], "height": size["height"], "num_images": n}))
    return out


_BASELINE = SchemaValidator(
    cs.typed_dict_schema(
        {
            "width": cs.typed_dict_field(cs.int_schema(gt=0, le=14142, strict=True)),
            "height": cs.typed_dict_field(cs.int_schema(gt=0, le=14142, strict=True)),
            "num_images": cs.typed_dict_field(cs.int_schema(ge=1, le=4, strict=True)),
        }
    )
)
_STEP = Decimal("0.01")


def baseline_quote(rate: Decimal, body: dict[str, int]) -> Decimal:
    v = _BASELINE.validate_python(body)
    units = -(-v["width"] * v["height"] // 10_000)  # ceil to 0.01 MP
    return units * _STEP * v["num_images"] * rate


def best_rate(fn: Callable[[], None], n_items: int, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n_items / best


def bench_quotes(count: int, runs: int) -> None:
    mix = request_mix(count)
    base = baseline_mix(mix)
    quote = pricing.quote
    book = default_book()

    # both sides give the same amounts: the baseline is the same math, not a different one
    for (endpoint, body), (rate, b) in zip(mix, base):
        assert quote(endpoint, body, book=book).amount == baseline_quote(rate, b), (endpoint, body)

    def run_quotes() -> None:
        for endpoint, body in mix:
            quote(endpoint, body)

    def run_baseline() -> None:
        for rate, body in base:
            baseline_quote(rate, body)

    run_quotes()
    run_baseline()
    ours = best_rate(run_quotes, count, runs)
    bare = best_rate(run_baseline, count, runs)
    print(f"quotes:     pricing.quote     {ours:>12,.0f} quotes/s  (best of {runs} runs x {count:,} requests)")
    print(f"            baseline sketch   {bare:>12,.0f} quotes/s")
    print(f"            ratio             {ours / bare:>12.2f} x baseline")
    verdict = "meets" if ours >= QUOTES_TARGET else "MISSES"
    print(f"            target            {QUOTES_TARGET:>12,} quotes/s  -> {verdict}")


def bench_cold_start(runs: int) -> None:
    script = Path(sys.executable).with_name("pixelgov")
    if not script.exists():
        print(f"cold start: skipped, no console script at {script}")
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELGOV_")}
    ours_cmd = [str(script), "price", "fal-ai/flux/dev"]
    base_cmd = [sys.executable, "-c", "import click, pydantic"]

    def once(cmd: list[str]) -> float:
        start = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, check=False)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")
        return elapsed

    once(ours_cmd), once(base_cmd)  # warm the OS caches
    ours: list[float] = []
    base: list[float] = []
    for _ in range(runs):  # interleaved, so drift hits both alike
        ours.append(once(ours_cmd))
        base.append(once(base_cmd))
    m_ours, m_base = statistics.median(ours), statistics.median(base)
    ratio = m_ours / m_base
    print(f"cold start: pixelgov price    {m_ours * 1000:>9.1f} ms median  (of {runs} runs)")
    print(f"            import click, pydantic {m_base * 1000:>4.1f} ms median")
    print(f"            ratio             {ratio:>12.2f} x baseline")
    verdict = "meets" if ratio <= COLD_START_TARGET else "MISSES"
    print(f"            target            {COLD_START_TARGET:>12} x  -> {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and runs")
    args = parser.parse_args(argv)
    count, runs, cold_runs = (2_000, 3, 15) if args.quick else (20_000, 7, 31)
    print(f"python {sys.version.split()[0]} on {sys.platform}; price book {default_book().version}")
    bench_quotes(count, runs)
    bench_cold_start(cold_runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
