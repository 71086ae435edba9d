"""Dispatched operations and attention kernels per transformer block, this tree against a baseline revision.

    python bench/transformer_ops.py                # this tree vs HEAD (git archive into a temp folder)
    python bench/transformer_ops.py --baseline ''  # this tree only

Counts come from a TorchDispatchMode counter on the CPU (each dispatched op is one kernel launch on a GPU;
views are left out), for a steady-state call: the caches built once per coordinate set are warm. Per block
and per *guided* evaluation (conditional + unconditional pass, CFG active):

- dense: a stage-1 cross block, 4 rows x 512 tokens; sparse: a stage-2 cross block on 3 objects of different
  voxel counts; swin: a decoder block on one object with many distinct window lengths; group norm: one object.
- "elementwise" counts the kernels outside GEMMs and attention: the work torch.compile fuses. With compile on
  (CUDA), each call of a fused function becomes one fused kernel plus its GEMMs, so "fused calls" is what
  remains of the elementwise kernels.

Widths are small (counts do not depend on width); the run takes seconds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
GEMM_OR_ATTENTION = ("mm", "addmm", "bmm", "linear", "scaled_dot_product", "fmha")


def _this_trees_counter():
    """The dispatch counter of this tree, also when the baseline's package is the one on the path."""
    path = ROOT / "server" / "iscene_server" / "nn" / "dispatch_count.py"
    spec = importlib.util.spec_from_file_location("dispatch_count", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


counter = _this_trees_counter()


def count(fn) -> dict:
    """Counts of one steady-state call (after a first call has built the per-coordinate caches)."""
    with torch.no_grad():
        fn()
    with torch.no_grad(), counter.DispatchCounter() as ops:
        fn()
    elementwise = sum(n for name, n in ops.ops.items()
                      if name not in counter.VIEW_OPS and not any(k in name for k in GEMM_OR_ATTENTION))
    return {"kernels": ops.kernels, "attention": ops.attention_calls, "elementwise": elementwise}


def fused_calls(fn) -> int | None:
    """How many fused-function calls ``fn`` makes (None where this tree has no fused functions)."""
    try:
        from iscene_server.nn import compile as fused
    except ImportError:
        return None
    calls = [0]

    def counted(f):
        def call(*args):
            calls[0] += 1
            return f(*args)
        return call

    original = fused.UsesFusedFunctions.fused
    fused.UsesFusedFunctions.fused = fused.FusedFunctions({n: counted(f) for n, f in fused.FUNCTIONS.items()})
    try:
        with torch.no_grad():
            fn()
    finally:
        fused.UsesFusedFunctions.fused = original
    return calls[0]


def zero_condition(cond: torch.Tensor, rows_with_tokens: torch.Tensor | None = None):
    """This tree's unconditional condition (the marker if it has one, else zeros)."""
    try:
        from iscene_server.nn.condition import ConditionRows
    except ImportError:
        zeros = torch.zeros_like(cond)
        return zeros if rows_with_tokens is None else torch.cat([rows_with_tokens, zeros])
    return ConditionRows.zeros_like(cond) if rows_with_tokens is None else ConditionRows(rows_with_tokens,
                                                                                          cond.shape[0])


def has_paired() -> bool:
    try:
        import iscene_server.nn.condition  # noqa: F401 - present exactly where guidance is batched
    except ImportError:
        return False
    return True


def voxels(counts: list[int], extent: int, channels: int, seed: int):
    from iscene_server.nn.sparse import SparseTensor

    g = torch.Generator().manual_seed(seed)
    rows = []
    for b, n in enumerate(counts):
        cells = torch.randperm(extent ** 3, generator=g)[:n].sort().values
        xyz = torch.stack([cells // extent ** 2, cells // extent % extent, cells % extent], dim=1)
        rows.append(torch.cat([torch.full((n, 1), b), xyz], dim=1))
    coords = torch.cat(rows).int()
    return SparseTensor(torch.randn(len(coords), channels, generator=g), coords, len(counts))


def measure() -> dict:
    from iscene_server.nn.sparse import SparseGroupNorm32
    from iscene_server.nn.sparse_transformer import (
        ModulatedSparseTransformerCrossBlock,
        SparseTransformerBlock,
        TokenBatch,
        window_segments,
    )
    from iscene_server.nn.transformer import ModulatedTransformerCrossBlock

    torch.manual_seed(0)
    paired = has_paired()
    results = {}

    dense = ModulatedTransformerCrossBlock(64, 64, 4, qk_rms_norm=True).eval()
    x, mod, cond = torch.randn(4, 512, 64), torch.randn(4, 64), torch.randn(4, 77, 64)

    def dense_guided():
        if paired:
            dense(torch.cat([x, x]), torch.cat([mod, mod]), zero_condition(cond, cond))
        else:
            dense(x, mod, cond)
            dense(x, mod, zero_condition(cond))

    results["dense cross block, guided"] = {**count(dense_guided), "fused": fused_calls(dense_guided)}

    sparse = ModulatedSparseTransformerCrossBlock(64, 64, 4, qk_rms_norm=True).eval()
    objects = voxels([700, 610, 530], 16, 64, seed=1)
    doubled = objects.repeat_batch(2) if paired else None
    smod = torch.randn(3, 64)
    scond = torch.randn(3, 77, 64)

    def sparse_guided():
        if paired:
            sparse(doubled.feats, torch.cat([smod, smod]), zero_condition(scond, scond), TokenBatch.of(doubled))
        else:
            tokens = TokenBatch.of(objects)
            sparse(objects.feats, smod, scond, tokens)
            sparse(objects.feats, smod, zero_condition(scond), tokens)

    results["sparse cross block (3 objects), guided"] = {**count(sparse_guided), "fused": fused_calls(sparse_guided)}

    swin = SparseTransformerBlock(64, 4, 4.0, window_size=8, shift=4).eval()
    surface = voxels([3000], 64, 64, seed=2)
    lengths = window_segments(surface, 8, 4).lengths
    results[f"swin block ({len(set(lengths))} window lengths)"] = {**count(lambda: swin(surface)),
                                                                  "fused": fused_calls(lambda: swin(surface))}

    norm = SparseGroupNorm32(32, 64).eval()
    results["group norm (1 object)"] = {**count(lambda: norm(surface)), "fused": None}
    return results


def baseline_counts(revision: str) -> dict:
    """Run this script's counting against ``revision``'s server package in a subprocess."""
    with tempfile.TemporaryDirectory() as folder:
        archive = Path(folder) / "src.tar"
        subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), revision, "server"], check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")
        env = {**os.environ, "PYTHONPATH": str(Path(folder) / "server")}
        out = subprocess.run([sys.executable, __file__, "--json"], env=env, check=True, capture_output=True,
                             text=True, cwd=folder)
        return json.loads(out.stdout)


def _cell(now: dict, before: dict | None, key: str) -> str:
    value = now[key]
    if value is None:
        return "-"
    if before is None or before.get(key) is None:
        return str(value)
    return f"{before[key]} → {value}"


def table(current: dict, baseline: dict | None, revision: str) -> str:
    head = "| block | kernels | attention calls | elementwise kernels | fused calls (compiled) |"
    lines = [head, "|---|---|---|---|---|"]
    for name, now in current.items():
        before = (baseline or {}).get(name)

        cells = [_cell(now, before, key) for key in ("kernels", "attention", "elementwise", "fused")]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    title = f"Dispatched ops per block, {revision} → this tree (CPU, torch {torch.__version__})" if baseline \
        else f"Dispatched ops per block (CPU, torch {torch.__version__})"
    return f"{title}\n\n" + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="HEAD", help="git revision to compare with ('' = none)")
    parser.add_argument("--json", action="store_true", help="print this tree's counts as JSON only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    current = measure()
    if args.json:
        print(json.dumps(current))
        return
    baseline = baseline_counts(args.baseline) if args.baseline else None
    print(table(current, baseline, args.baseline))


if __name__ == "__main__":
    main()
