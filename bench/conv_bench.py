"""Submanifold 3x3x3 convolution on the CPU, side by side in one run.

* ours: the neighbour table (built once per coordinate set) and the CPU strategy, per offset a gather, a GEMM
  and a row-add over only the voxels that have that neighbour;
* columns: the same table and the CUDA strategy (one gather + one GEMM per chunk, a fixed number of kernels,
  no host synchronisation), timed on the CPU for reference;
* spconv: the reference's library, ``SubMConv3d`` with the Native algorithm and an ``indice_key`` as the
  TRELLIS decoders use it (pairs cached per coordinate set); ``pip install spconv==2.3.8`` (CPU build,
  for this bench only — not a project dependency);
* previous: the 27-pair path this project used before (per offset: gather, matmul, cast, ``index_add_``).

Voxels: a sphere shell (two voxels thick), subdivided into 2x2x2 children once (the mesh decoder's 128^3
layer) or twice (its 256^3 layer), as the decoder's upsampling blocks make them; the shells are smaller
than a release object's (about 20k voxels at 64^3) so that the run stays short on 2 cores, the structure
(neighbour occupancy) is the same. Channels: the release mesh decoder's (768 -> 192 -> 96) and the tiny
package's (256 -> 64 -> 32). Times: the best of ``--repeats`` calls with the map cached, interleaved
across implementations; "first" (ours, spconv) includes building the neighbour map. "spconv wrong rows": output rows of
spconv's timed calls that differ from the previous path (itself proven against a dense oracle in the
tests) — spconv's CPU build, run on more than one thread, now and then returns a few wrong rows (exact on
one thread); ours and the previous path must agree or the bench fails.

    python bench/conv_bench.py [--repeats 2] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import dataclass

import torch

from iscene_server.nn.dispatch_count import DispatchCounter
from iscene_server.nn.sparse import SparseConv3d, SparseTensor
from iscene_server.nn.sparse.conv import kernel_offsets, neighbour_table


@dataclass(frozen=True)
class Case:
    name: str
    subdivisions: int
    shell_resolution: int
    c_in: int
    c_out: int


CASES = [
    Case("release 128^3 layer, conv 768->192", 1, 10, 768, 192),
    Case("release 128^3 layer, conv 192->192", 1, 10, 192, 192),
    Case("release 256^3 layer, conv 192->96", 2, 8, 192, 96),
    Case("release 256^3 layer, conv 96->96", 2, 8, 96, 96),
    Case("tiny 128^3 layer, conv 256->64", 1, 10, 256, 64),
    Case("tiny 256^3 layer, conv 64->32", 2, 8, 64, 32),
]


def shell_voxels(resolution: int, subdivisions: int) -> torch.Tensor:
    """``[N, 4]`` int32 (batch 0): a two-voxel-thick sphere shell in ``resolution^3``, subdivided."""
    r = torch.arange(resolution)
    grid = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    distance = (grid.float() - (resolution - 1) / 2).norm(dim=1)
    xyz = grid[(distance - 0.45 * resolution).abs() <= 1.0]
    children = torch.stack(torch.meshgrid(*[torch.arange(2)] * 3, indexing="ij"), -1).reshape(1, 8, 3)
    for _ in range(subdivisions):
        xyz = (xyz[:, None] * 2 + children).reshape(-1, 3)
    return torch.cat([torch.zeros(len(xyz), 1, dtype=torch.long), xyz], 1).int()


# --- the previous path (before the neighbour table), kept here as the baseline ------------------------
def previous_pairs(coords: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per kernel offset, the (output rows, input rows) that are that offset apart (host syncs included)."""
    c = coords.long()
    span = int(c[:, 1:].max()) + 3

    def keys(offset: torch.Tensor) -> torch.Tensor:
        shifted = c[:, 1:] + offset + 1
        return ((c[:, 0] * span + shifted[:, 0]) * span + shifted[:, 1]) * span + shifted[:, 2]

    sorted_keys, order = torch.sort(keys(torch.zeros(3, dtype=torch.long)))
    pairs = []
    for offset in kernel_offsets(3):
        query = keys(offset)
        position = torch.searchsorted(sorted_keys, query).clamp_(max=len(sorted_keys) - 1)
        out_rows = torch.nonzero(sorted_keys[position] == query).flatten()
        pairs.append((out_rows, order[position[out_rows]]))
    return pairs


def previous_conv(feats: torch.Tensor, pairs, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    c_out = weight.shape[0]
    kernels = weight.reshape(c_out, 27, -1)
    out = torch.addmm(bias, feats, kernels[:, 13].t()).float()
    for index, (out_rows, in_rows) in enumerate(pairs):
        if index != 13 and out_rows.numel():
            out.index_add_(0, out_rows, (feats[in_rows] @ kernels[:, index].t()).float())
    return out.to(weight.dtype)


# --- the implementations under test: each gives (first call incl. map, cached call) ------------------
def with_strategy(conv: SparseConv3d, strategy: str) -> SparseConv3d:
    twin = SparseConv3d(conv.conv.weight.shape[-1], conv.conv.weight.shape[0], conv.conv.kernel_size)
    twin.load_state_dict(conv.state_dict())
    twin.strategy = strategy
    return twin


def ours(case: Case, coords: torch.Tensor, feats: torch.Tensor, conv: SparseConv3d, strategy: str = "pairs"):
    conv = with_strategy(conv, strategy)

    def first():
        return conv(SparseTensor(feats, coords, 1)).feats

    warm = SparseTensor(feats, coords, 1)
    conv(warm)
    return first, lambda: conv(warm).feats


def columns(case: Case, coords: torch.Tensor, feats: torch.Tensor, conv: SparseConv3d):
    return ours(case, coords, feats, conv, "columns")


def previous(case: Case, coords: torch.Tensor, feats: torch.Tensor, conv: SparseConv3d):
    weight, bias = conv.conv.weight, conv.conv.bias
    pairs = previous_pairs(coords)
    return (lambda: previous_conv(feats, previous_pairs(coords), weight, bias),
            lambda: previous_conv(feats, pairs, weight, bias))


def spconv_reference(case: Case, coords: torch.Tensor, feats: torch.Tensor, conv: SparseConv3d):
    import spconv.pytorch as spconv

    reference = spconv.SubMConv3d(case.c_in, case.c_out, 3, bias=True, indice_key="subm",
                                  algo=spconv.ConvAlgo.Native)
    reference.weight.copy_(conv.conv.weight)  # the same stored layout [C_out, k, k, k, C_in]
    reference.bias.copy_(conv.conv.bias)
    shape = (coords[:, 1:].amax(0) + 1).tolist()

    def tensor():
        return spconv.SparseConvTensor(feats, coords, shape, 1)

    warm = reference(tensor())  # its output carries the pairs, as every later layer's input does
    if "subm" not in warm.indice_dict:
        raise RuntimeError("spconv did not cache its indice pairs; the cached timing would include them")
    return lambda: reference(tensor()).features, lambda: reference(warm.replace_feature(feats)).features


def spconv_available() -> bool:
    try:
        import spconv.pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def timed(run) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = run()
    return time.perf_counter() - start, out


def wrong_rows(out: torch.Tensor, expected: torch.Tensor) -> int:
    return int(((out - expected).abs() > 1e-3 + 1e-3 * expected.abs()).any(1).sum())


def op_counts(resolution: int, subdivisions: int, channels: int) -> tuple[int, DispatchCounter, DispatchCounter]:
    """Dispatched aten operations of one cached 3x3x3 conv on a subdivided sphere shell: (voxels, the CUDA
    strategy, previous)."""
    coords = shell_voxels(resolution, subdivisions)
    feats = torch.randn(len(coords), channels)
    conv = with_strategy(SparseConv3d(channels, channels, 3), "columns")
    x = SparseTensor(feats, coords, 1)
    conv(x)
    pairs = previous_pairs(coords)
    with DispatchCounter() as new:
        conv(x)
    with DispatchCounter() as old:
        previous_conv(feats, pairs, conv.conv.weight, conv.conv.bias)
    return len(coords), new, old


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            model = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def measure(case: Case, implementations: dict, repeats: int, scale: float) -> list[str]:
    """One table row: voxels, neighbour occupancy, cached times, ratios, first-call times, spconv's errors."""
    torch.manual_seed(0)
    coords = shell_voxels(max(4, round(case.shell_resolution * scale)), case.subdivisions)
    feats = torch.randn(len(coords), case.c_in)
    conv = SparseConv3d(case.c_in, case.c_out, 3)
    occupied = (neighbour_table(coords, 3) < len(coords)).sum(1).float().mean().item()
    runs = {name: make(case, coords, feats, conv) for name, make in implementations.items()}
    expected = runs["previous"][1]()
    samples = {name: [] for name in runs}
    wrong = dict.fromkeys(runs, 0)
    for _ in range(repeats):  # interleaved, so that load from elsewhere hits all alike
        for name, (_, cached) in runs.items():
            seconds, out = timed(cached)
            samples[name].append(seconds)
            wrong[name] = max(wrong[name], wrong_rows(out, expected))
    if wrong["ours"]:
        raise AssertionError(f"{case.name}: ours differs from the previous path on {wrong['ours']} rows")
    if wrong["columns"]:
        raise AssertionError(f"{case.name}: columns differs from the previous path on {wrong['columns']} rows")
    cached_s = {name: min(times) for name, times in samples.items()}
    first_s = {name: timed(first)[0] for name, (first, _) in runs.items() if name != "previous"}
    row = [case.name, str(len(coords)), f"{occupied:.1f}"]
    row += [f"{1e3 * cached_s[name]:.0f}" for name in runs]
    row += [f"{cached_s[name] / cached_s['ours']:.2f}" for name in runs if name != "ours"]
    row += [f"{1e3 * first_s[name]:.0f}" for name in first_s]
    return row + ([str(wrong["spconv"])] if "spconv" in runs else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="cached calls per implementation (best taken)")
    parser.add_argument("--scale", type=float, default=1.0, help="shell resolution factor (voxels ~ scale^2)")
    args = parser.parse_args()
    implementations = {"ours": ours, "columns": columns, "spconv": spconv_reference, "previous": previous}
    if not spconv_available():
        print("spconv is not installed (pip install spconv==2.3.8): comparing against the previous path only")
        del implementations["spconv"]
    print(f"machine: {machine()}\n")
    header = ["case", "voxels", "occupied/27"] + [f"{name} ms" for name in implementations]
    header += [f"{name}/ours" for name in implementations if name != "ours"]
    header += [f"first {name} ms" for name in implementations if name != "previous"]
    header += ["spconv wrong rows"] if "spconv" in implementations else []
    rows = []
    started = time.perf_counter()
    with torch.inference_mode():
        for case in CASES:
            rows.append(measure(case, implementations, args.repeats, args.scale))
            print(" | ".join(rows[-1]), flush=True)
    with torch.no_grad():  # as the tests count (inference mode would show composite ops undecomposed)
        op_rows = [op_counts(6, 1, 96), op_counts(8, 2, 96)]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\ndispatched aten ops per cached 3x3x3 conv (96 -> 96 channels, float32), all / without views:")
    for voxels, new, old in op_rows:
        print(f"  {voxels} voxels: columns (CUDA) {new.total} / {new.kernels} ({new.ops['aten.embedding']} chunk(s)), "
              f"previous {old.total} / {old.kernels}")
    print(f"bench time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
