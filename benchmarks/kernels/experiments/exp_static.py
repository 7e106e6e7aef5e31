"""Experiment: what a decode-path kernel compiles to for sm_90, on a machine without a GPU.

`python -m benchmarks.kernels.experiments.exp_static {decode,staged,gate_up,routed,down} SHAPE T
[--config JSON]`: calls the wrapper (`decode.moe_decode`, `staged.moe_staged`,
`grouped_gemm.gate_up`, `routed_gate_up.gate_up_routed` or `grouped_gemm.down` on the layout by
slot; the last three default to the checked-in H200 entry's GEMM tile and PDL, `--config` a GEMM
entry with "BLOCK_M", and "RANKED" for `routed`) on CPU tensors of the shape with
the kernel's launch caught, compiles that launch with Triton for sm_90 (with the divisibility
hints the launcher would give: tensors and multiples of 16), and prints the kernel's shared
memory, the registers and spilled bytes `ptxas -v` reports, the count of each global-memory,
atomic and MMA instruction in the PTX, and of a few SASS opcodes in the assembled cubin. It
chose the staged kernel's default tiles, and showed that `ptxas` turns the decode kernel's
unused `atom.add.v4.f32` into `REDG` (NOTES.md, Session 14). Counts depend on the Triton version: the device image has 3.6
(`pip install --target /tmp/t36 triton==3.6.0`, then run with `PYTHONPATH=/tmp/t36:.`).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.jit import mangle_type

from benchmarks.kernels._moe_common import SHAPES
from experts.moe.kernels import decode, grouped_gemm, routed_gate_up, staged


def _one_launch(wrapper):
    def call(x, w13, w2, logits, s, bias, config):
        wrapper(x, w13, w2, logits=logits, routing=s.routing, bias=bias, local_experts=s.local,
                config=config)  # fmt: skip
    return call


def _gate_up(x, w13, w2, logits, s, bias, config):  # the aligned path's gate/up, slot layout
    m = x.shape[0] * s.top_k
    bm = config["BLOCK_M"]
    sorted_ids = torch.zeros(m * bm, dtype=torch.int32)
    grouped_gemm.gate_up(x, w13, sorted_ids, torch.zeros(m, dtype=torch.int32),
                         torch.zeros(1, dtype=torch.int32), s.top_k, config)  # fmt: skip


def _routed(x, w13, w2, logits, s, bias, config):
    routed_gate_up.gate_up_routed(x, w13, logits, s.routing, config, bias, s.local)


def _down_args(x, w2, s, config):  # the layout by slot's down operands
    m, bm = x.shape[0] * s.top_k, config["BLOCK_M"]
    h = torch.zeros(m * bm, s.inter, dtype=x.dtype)
    return (h, w2, torch.zeros(m), torch.zeros(m * bm, dtype=torch.int32),
            torch.zeros(m, dtype=torch.int32), torch.zeros(1, dtype=torch.int32), config)


def _down(x, w13, w2, logits, s, bias, config):
    grouped_gemm.down(*_down_args(x, w2, s, config))


KERNELS = {"decode": (decode, "_decode_kernel", _one_launch(decode.moe_decode)),
           "staged": (staged, "_staged_kernel", _one_launch(staged.moe_staged)),
           "gate_up": (grouped_gemm, "_gate_up_kernel", _gate_up),
           "routed": (routed_gate_up, "_gate_up_routed_kernel", _routed),
           "down": (grouped_gemm, "_down_kernel", _down)}  # fmt: skip
_OPTIONS = ("num_warps", "num_stages", "maxnreg")
_LAUNCH_ONLY = ("launch_pdl",)
_COUNTED = ("ld.global", "st.global", "atom.", "red.", "cp.async", "mma", "ldmatrix", "bar.sync",
            "shfl")


class _Catch:
    """Stands in for a @triton.jit kernel: `kernel[grid](*args, **kw)` records the launch."""

    def __init__(self) -> None:
        self.launches: list[tuple] = []

    def __getitem__(self, grid):
        return lambda *args, **kw: self.launches.append((grid, args, kw))


def catch_launch(kind: str, shape_name: str, t: int, config: dict | None) -> tuple:
    """(kernel, grid, args, kwargs) of the wrapper's launch for `shape_name` at T tokens."""
    module, name, wrapper = KERNELS[kind]
    s = SHAPES[shape_name]
    x = torch.zeros(t, s.h, dtype=torch.bfloat16)
    w13 = torch.empty(s.local_e, 2 * s.inter, s.h, dtype=torch.bfloat16)
    w2 = torch.empty(s.local_e, s.h, s.inter, dtype=torch.bfloat16)
    logits = torch.zeros(t, s.e)
    bias = torch.zeros(s.e) if s.with_bias else None
    kernel, catch = getattr(module, name), _Catch()
    setattr(module, name, catch)
    try:
        wrapper(x, w13, w2, logits, s, bias, config)
    finally:
        setattr(module, name, kernel)
    grid, args, kw = catch.launches[0]
    return kernel, grid, args, kw | {"UPCAST": False}  # as on a GPU


def compile_launch(kernel, args, kw, hints: bool = True) -> triton.compiler.CompiledKernel:
    """Compile one launch (run-time `args`, compile-time and launch options `kw`) for sm_90; with
    `hints`, the divisibility the launcher would give (tensors, ints that are multiples of 16)."""
    kw = dict(kw)
    options = {k: kw.pop(k) for k in _OPTIONS if k in kw}
    for k in _LAUNCH_ONLY:  # a launch option, not a compile option
        kw.pop(k, None)
    order = [p.name for p in kernel.params]
    runtime = [p.name for p in kernel.params if not p.is_constexpr]
    signature = {n: mangle_type(a) for n, a in zip(runtime, args, strict=True)}
    hinted = [n for n, a in zip(runtime, args, strict=True) if hints and (
        isinstance(a, torch.Tensor) or (type(a) is int and a and a % 16 == 0))]  # fmt: skip
    src = triton.compiler.ASTSource(
        fn=kernel, signature={n: signature.get(n, "constexpr") for n in order}, constexprs=kw,
        attrs={(order.index(n),): [["tt.divisibility", 16]] for n in hinted},
    )
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


_TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
_SASS = ("LDGSTS", "LDG", "STG", "REDG", "ATOMG", "HMMA", "BAR")


def assemble(ptx: str) -> tuple[str, dict[str, int]]:
    """The PTX through the `ptxas` the installed Triton uses for sm_90 (3.6: its own `ptxas`; 3.9:
    `ptxas-blackwell`): (registers and spilled bytes per thread, {SASS opcode family: count} from
    `cuobjdump -sass` of the cubin)."""
    from triton.backends.nvidia.compiler import get_ptxas

    arch = re.search(r"^\.target\s+(\S+)", ptx, re.M).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        src, cubin = Path(tmp) / "k.ptx", Path(tmp) / "k.cubin"
        src.write_text(ptx)
        run = subprocess.run([get_ptxas(90).path, f"-arch={arch}", "-v", src, "-o", cubin],
                             capture_output=True, text=True)  # fmt: skip
        if run.returncode:
            return f"ptxas failed: {run.stderr.strip()[:200]}", {}
        sass = subprocess.run([_TOOLS / "cuobjdump", "-sass", cubin], capture_output=True,
                              text=True).stdout  # fmt: skip
    regs = re.search(r"Used (\d+) registers", run.stderr).group(1)
    spill = re.search(r"(\d+) bytes spill stores", run.stderr).group(1)
    ops = collections.Counter(re.findall(r"\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9]*)[.\s]", sass))
    return f"{regs} registers, {spill} B spilled", {k: ops[k] for k in _SASS if ops[k]}


def instruction_counts(ptx: str) -> dict[str, int]:
    counts: collections.Counter = collections.Counter()
    for line in ptx.splitlines():
        m = re.match(r"\s*(?:@!?%p\d+\s+)?([a-z]+[a-z0-9.:_]*)", line)
        if m and m.group(1).startswith(_COUNTED):
            counts[m.group(1)] += 1
    return dict(sorted(counts.items()))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("kind", choices=list(KERNELS))
    ap.add_argument("shape", choices=list(SHAPES))
    ap.add_argument("tokens", type=int)
    ap.add_argument("--config", type=json.loads, default=None,
                    help="the decode entry, as JSON (default: the wrapper's GPU default)")
    args = ap.parse_args(argv)
    config = args.config
    if config is None and args.kind not in ("decode", "staged"):  # the checked-in H200 entry's
        from experts.moe.kernels.configs import shape_key, tuned_table

        s = SHAPES[args.shape]
        key = shape_key(s.local_e, s.h, s.inter, s.top_k)
        entry = tuned_table("NVIDIA_H200")[key][str(args.tokens)]
        gemm = "gate_up" if args.kind in ("gate_up", "routed") else "down"
        config = entry[gemm] | {"BLOCK_M": entry["BLOCK_M"], "PDL": entry.get("PDL", False)}
    if config is None:  # the GPU default, not the interpreter's that a CPU call would pick
        default = (staged.default_staged_config if args.kind == "staged"
                   else decode.default_decode_config)  # fmt: skip
        config = default(False)
    kernel, grid, launch_args, kw = catch_launch(args.kind, args.shape, args.tokens, config)
    compiled = compile_launch(kernel, launch_args, kw)
    ptx = compiled.asm["ptx"]
    print(f"Triton {triton.__version__}, sm_90: {args.kind} {args.shape} T={args.tokens}, "
          f"grid {grid[0]}, config {json.dumps(config)}")
    registers, sass = assemble(ptx)
    print(f"shared memory {compiled.metadata.shared} B, {registers}")
    body = [line for line in ptx.splitlines() if re.match(r"\s+[a-z@]", line)]
    print(f"PTX: {len(body)} instruction lines;", json.dumps(instruction_counts(ptx)))
    print("SASS:", json.dumps(sass))


if __name__ == "__main__":
    main()
