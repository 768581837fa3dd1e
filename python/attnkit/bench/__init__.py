"""The benchmark engine behind `attnkit bench`.

Cases (op x shape x dtype, with analytic FLOP and byte counts: scaled dot-product and multi-head
attention, ESPnet attention steps, end-to-end decoding) run on backends (attnkit per ISA, NumPy,
PyTorch when installed; CUDA backends when a device is present) at one or more thread counts. Each case is timed after a warm-up until a time budget is spent, cycling several input
copies; results are reported as a Markdown table and as JSON lines, and set against this
machine's measured np.matmul peak, and optionally plotted. Optional peers (torch, tqdm,
threadpoolctl, matplotlib) are used when importable and never required.

    from attnkit.bench import run, sdpa_case
    run([sdpa_case("enc", 8, 4, 512, 512, 64)], threads=[1, 2], json_path="out.json")
"""
from attnkit.bench.cases import (Case, DecodeCase, EspnetStepCase, decode_cases, espnet_step_case, espnet_step_cases,
                                  full_cases, mha_case, quick_cases, sdpa_case)
from attnkit.bench.report import compare
from attnkit.bench.runner import RunResult, run

__all__ = ["Case", "DecodeCase", "EspnetStepCase", "RunResult", "compare", "decode_cases", "espnet_step_case",
           "espnet_step_cases", "full_cases", "mha_case", "quick_cases", "run", "sdpa_case"]
