"""Shared helpers of the benchmark scripts: environment line and RESULTS.md appends."""

from __future__ import annotations

import datetime
import platform
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def environment() -> str:
    import jax

    import prenet_jax

    dev = jax.local_devices()
    kinds = ", ".join(sorted({d.device_kind for d in dev}))
    return (
        f"{len(dev)} x {kinds} ({jax.default_backend()}), host {platform.processor() or platform.machine()}; "
        f"prenet-jax {prenet_jax.__version__}, jax {jax.__version__}, python {platform.python_version()}"
    )


def append_result(title: str, lines: list[str]) -> None:
    """Append a dated section to benchmarks/RESULTS.md (creating it if needed)."""
    if not RESULTS.exists():
        RESULTS.write_text(
            "# Benchmark results\n\nEvery entry: date, device, versions, batch size. GPU figures only from the GPU machine.\n"
        )
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    with RESULTS.open("a") as f:
        f.write(f"\n## {title} ({stamp})\n\n{environment()}\n\n" + "\n".join(lines) + "\n")
