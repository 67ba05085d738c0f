"""The benchmark runner: command line, thread counts, interleaved timing, speedups, the markdown table,
JSON and PNG. Every family's benchmark runs through it.

A family is one module of compressops.bench that defines

    FAMILY = "<name>"                    # `python -m compressops bench <name>`
    class <Name>Bench(Family): ...       # its shapes, implementations, inputs and extra columns
    def main(argv=None) -> int:
        return runner.main(<Name>Bench(), argv)

families() finds it; nothing else lists it. For each thread count and shape the family yields groups of
implementations (Impl) that run on the same inputs; the runner calls each once (its output gives the
relative error), times them in turns (timing.interleaved), and fills in the speedups over the group's
dense baseline and best peer, weight bandwidth, TOP/s and the other load. The family's finish() adds
columns that need every row (speed-of-light against a peak), summary() prints what comes after the
files (issue targets).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import pkgutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterable

import torch

import compressops as co
from compressops.bench import report, timing
from compressops.info import cpu_model

# What a smoke run times each implementation for: enough to run the whole path, not to measure.
SMOKE_MIN_RUN_TIME = 0.01
ROLES = ("ours", "dense", "peer", "reference")

SHAPE, THREADS, IMPL = ("shape", "shape", ""), ("threads", "thr", "d"), ("impl", "implementation", "")
MEDIAN_US = ("us", "median us", ".0f")
X_FP32, X_BF16 = ("speedup_fp32", "x fp32", ".2f"), ("speedup_bf16", "x bf16", ".2f")
X_PEER = ("speedup_peer", "x best peer", ".2f")
GBS, TOPS, SOL = ("gbs", "weight GB/s", ".1f"), ("tops", "TOP/s", ".3f"), ("sol_pct", "% SoL", ".0f")
REL_ERR, OTHER_LOAD = ("relerr", "rel. err", ".4f"), ("other_load", "other load", ".2f")


@dataclass
class Impl:
    """One implementation of a group. fn() runs it on inputs built beforehand (the group's)."""

    label: str
    fn: Callable[[], object]
    role: str = "peer"  # one of ROLES: ours = compressops, dense = the fp32/bf16 baselines
    exact: torch.Tensor | None = None  # float64 output it should give: the row's rel. err is against it
    weight_bytes: int | None = None  # bytes of weights one call reads: weight GB/s, % SoL
    calls: int = 1  # layer calls one fn() makes (cold rows rotate over copies): the time is per call
    match: str | None = None  # "ours" rows compare with the peers that carry the same tag (e.g. a sparsity)
    fields: dict = field(default_factory=dict)  # more row fields (note, isa, copies)
    after_call: Callable[[dict], None] | None = None  # reads what the first call left (the route it took)


@dataclass
class Group:
    """Implementations timed in turns and compared with each other: one shape at one thread count."""

    shape: str
    impls: list[Impl]
    fields: dict = field(default_factory=dict)  # shape fields (m, n, k) and the table "kind"
    ops: float | None = None  # arithmetic ops of one call: the TOP/s column
    dram: bool = False  # weights cannot stay in cache: % SoL against the DRAM bandwidth


@dataclass
class Speedup:
    """A speedup column: the group's `baseline` time over the row's."""

    key: str
    baseline: str  # label prefix of the baseline implementation in the group
    roles: tuple[str, ...] | None = None  # the roles of the rows that get it (None: every row)


@dataclass
class Table:
    columns: list[tuple[str, str, str]]  # (row key, header, format spec), as report.markdown_table
    kind: str | None = None  # the rows whose "kind" field is this (None: every row)
    title: str | None = None


@dataclass
class Variant:
    """The same rows measured again in a subprocess whose environment is set before torch loads."""

    name: str  # the rows' "table" field in the JSON and the --no-<name> option
    heading: str
    env: dict[str, str]


@dataclass
class Run:
    """The settings of one run and what it measured so far. Families read it; per-thread results
    of their own go in `measured`."""

    args: argparse.Namespace
    shape_set: str
    threads_list: list[int]
    min_run_time: float
    quick: bool
    smoke: bool
    cold: bool
    threads: int = 0  # the thread count being measured
    llc: int = 0
    bw_cache: float | None = None  # GB/s at this thread count (families with measures_bandwidth)
    bw_dram: float | None = None
    notes: list[str] = field(default_factory=list)
    measured: dict = field(default_factory=dict)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def skip_slow_peer(self, label: str) -> bool:
        """True, with a note, in a smoke run: peers that take seconds to build are left out of it."""
        if self.smoke:
            self.note(f"{label} skipped in a smoke run")
        return self.smoke


class Family:
    """What one family's benchmark declares; override groups() and the class attributes it needs."""

    name = ""  # the module's FAMILY
    title = ""  # "int8 linear": the heading and the plot title
    stem = ""  # output files: <out>/<stem>_<shape set>.json and .png
    shape_sets: dict[str, list] = {}
    default_shapes, quick_shapes, smoke_shapes = "design", "quick", "smoke"
    min_run_time = 0.3
    quick_min_run_time = 0.2
    rounds = 3  # turns per implementation and row (timing.interleaved)
    has_cold = False  # weights-beyond-cache rows (--no-cold)
    quick_cold = True  # --quick keeps them
    measures_bandwidth = False  # read bandwidth per thread count: bw_ref, % SoL
    speedups: list[Speedup] = []
    tables: list[Table] = []
    legend: list[str] = []  # what the columns mean, printed under the heading
    variants: list[Variant] = []
    main_heading: str | None = None  # above the main tables when there are variants; {isa} is filled in
    main_table = "main"
    plot_key, plot_ylabel = "speedup_fp32", "speedup vs fp32 nn.Linear"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Options of this family only."""

    def configure(self, run: Run) -> None:
        """Settle this family's options once the common ones are (e.g. what --quick means for them)."""

    def setup(self, run: Run) -> None:
        """Once per run, before any thread count."""

    def per_thread(self, run: Run) -> None:
        """Once per thread count, after torch.set_num_threads(run.threads): ceilings, peaks."""

    def groups(self, shape, run: Run) -> Iterable[Group]:
        """The groups of one shape at run.threads; built lazily, so one is measured before the next exists."""
        raise NotImplementedError

    def finish(self, rows: list[dict], run: Run) -> None:
        """Columns that need every row of the run."""

    def heading_extra(self, run: Run) -> str:
        return ""

    def meta(self, run: Run) -> dict:
        return {}

    def plot_group(self, row: dict) -> str:
        return f"{row['shape']} {row['threads']}thr"

    def summary(self, rows: list[dict], run: Run) -> None:
        """Printed after the files are written."""


def families() -> dict[str, ModuleType]:
    """{FAMILY: module} for every module of compressops.bench that defines FAMILY and main(argv)."""
    found = {}
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda i: i.name):
        module = importlib.import_module(f"{__package__}.{info.name}")
        if isinstance(getattr(module, "FAMILY", None), str) and callable(getattr(module, "main", None)):
            found[module.FAMILY] = module
    return found


def default_family(found: dict[str, ModuleType]) -> str | None:
    """The family whose module sets DEFAULT = True (what `python -m compressops bench` runs when no
    family is named), or None."""
    return next((name for name, module in found.items() if getattr(module, "DEFAULT", False)), None)


def rel_err(y, exact: torch.Tensor) -> float:
    """||y - exact|| / ||exact||. y: a tensor or numpy array of exact's shape, or onnxruntime's list of
    outputs (the first is y); exact: float64."""
    if isinstance(y, (list, tuple)):
        y = y[0]
    y = torch.as_tensor(y).double()
    return float((y - exact).norm() / exact.norm().clamp_min(1e-30))


def parser(family: Family) -> argparse.ArgumentParser:
    doc = sys.modules[type(family).__module__].__doc__ or family.title
    p = argparse.ArgumentParser(prog=f"compressops bench {family.name}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    quick_mrt = min(family.min_run_time, family.quick_min_run_time)
    p.add_argument("--shapes", choices=sorted(family.shape_sets),
                   help=f"named shape set (default {family.default_shapes})")
    p.add_argument("--threads", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--quick", action="store_true",
                   help=f"the '{family.quick_shapes}' shapes, 2 threads, {quick_mrt} s timing"
                   + ("" if family.quick_cold or not family.has_cold else ", no cold rows")
                   + " (options given explicitly still win)")
    p.add_argument("--smoke", action="store_true",
                   help=f"whether every implementation runs: the '{family.smoke_shapes}' shapes, 1 thread, "
                   f"{SMOKE_MIN_RUN_TIME} s timing, no cold rows or subprocess tables, no slow-to-build peers")
    p.add_argument("--min-run-time", type=float,
                   help=f"seconds of timing per implementation and row (default {family.min_run_time})")
    if family.has_cold:
        p.add_argument("--no-cold", action="store_true", help="skip the weights-beyond-cache M=1 rows")
    for v in family.variants:
        p.add_argument(f"--no-{v.name}", action="store_true", help=f"skip the table run in a subprocess: {v.heading}")
    p.add_argument("--isa", help="force a lower compressops CPU level for the whole run")
    p.add_argument("--out", default="benchmarks/results", help="directory for the JSON and PNG")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # print the rows as JSON only
    family.add_arguments(p)
    return p


def settings(family: Family, a: argparse.Namespace) -> Run:
    """The run the parsed options ask for: --smoke, then --quick, then the family's defaults fill in
    whatever was not given explicitly."""
    smoke, quick = a.smoke, a.quick and not a.smoke
    shape_set = a.shapes or (family.smoke_shapes if smoke else family.quick_shapes if quick else family.default_shapes)
    threads = [int(t) for t in a.threads.split(",")] if a.threads else [1] if smoke else [2] if quick else [1, 2]
    if a.min_run_time is not None:
        mrt = a.min_run_time
    else:
        mrt = SMOKE_MIN_RUN_TIME if smoke else min(family.min_run_time, family.quick_min_run_time) if quick \
            else family.min_run_time
    cold = (family.has_cold and not a.no_cold and not smoke and (family.quick_cold or not quick))
    run = Run(a, shape_set, threads, mrt, quick, smoke, cold)
    if smoke:
        run.note("smoke run: whether every implementation runs; its times mean nothing")
    return run


def measure(family: Family, group: Group, run: Run) -> list[dict]:
    """The rows of one group: each implementation called once (output, rel. err), then all timed in turns."""
    rows = []
    with torch.inference_mode():
        for impl in group.impls:
            row = {"shape": group.shape, **group.fields, "threads": run.threads, "impl": impl.label,
                   "role": impl.role, **impl.fields}
            y = impl.fn()
            if impl.after_call is not None:
                impl.after_call(row)
            if impl.exact is not None:
                row["relerr"] = rel_err(y, impl.exact)
            rows.append(row)
        times = timing.interleaved([impl.fn for impl in group.impls], run.min_run_time, family.rounds)
    for row, impl, t in zip(rows, group.impls, times):
        us = t.us / impl.calls
        row.update(us=us, other_load=t.other_load)
        if t.void:
            row["void"] = True
        if impl.weight_bytes is not None:
            row["weight_bytes"], row["gbs"] = impl.weight_bytes, impl.weight_bytes / (us * 1e-6) / 1e9
            if run.bw_cache is not None:
                cached = not group.dram and impl.weight_bytes <= run.llc // 2
                row["bw_ref"] = run.bw_cache if cached else run.bw_dram
        if group.ops:
            row["tops"] = group.ops / (us * 1e-6) / 1e12
    _speedups(family.speedups, rows, group.impls)
    return rows


def _speedups(specs: list[Speedup], rows: list[dict], impls: list[Impl]) -> None:
    for s in specs:
        base = next((r["us"] for r in rows if r["impl"].startswith(s.baseline)), None)
        for r in rows:
            r[s.key] = base / r["us"] if base and (s.roles is None or r["role"] in s.roles) else None
    for r, impl in zip(rows, impls):
        peers = [(o["us"], o["impl"]) for o, i in zip(rows, impls) if o["role"] == "peer" and i.match == impl.match]
        if r["role"] == "ours" and peers:
            best_us, r["best_peer"] = min(peers)
            r["speedup_peer"] = best_us / r["us"]


def collect(family: Family, run: Run) -> list[dict]:
    """Every row of the run, thread count by thread count; torch's thread count is restored after."""
    torch.manual_seed(0)
    run.llc = timing.llc_bytes()
    family.setup(run)
    rows: list[dict] = []
    old_threads = torch.get_num_threads()
    try:
        for threads in run.threads_list:
            torch.set_num_threads(threads)
            run.threads = threads
            if family.measures_bandwidth:
                _measure_bandwidth(run)
            family.per_thread(run)
            for shape in family.shape_sets[run.shape_set]:
                for group in family.groups(shape, run):
                    rows += measure(family, group, run)
    finally:
        torch.set_num_threads(old_threads)
    family.finish(rows, run)
    return rows


def _measure_bandwidth(run: Run) -> None:
    cache_bytes, dram_bytes = min(16 * 2**20, run.llc // 2), 1 << 30
    if run.smoke:  # a smoke run checks the path, not the machine
        cache_bytes, dram_bytes = 1 << 20, 4 << 20
    run.bw_cache = timing.read_bandwidth_gbs(cache_bytes, run.min_run_time)
    run.bw_dram = timing.read_bandwidth_gbs(dram_bytes, run.min_run_time)
    run.notes.append(f"{run.threads} thr: read bandwidth {run.bw_cache:.1f} GB/s (cache-resident), "
                     f"{run.bw_dram:.1f} GB/s (DRAM)")


def rows_in_subprocess(family: Family, argv: list[str], env: dict[str, str]) -> list[dict]:
    """The rows of the same command line measured by a child process with `env` added."""
    cmd = [sys.executable, "-m", type(family).__module__, *argv, "--child"]
    out = subprocess.run(cmd, env=dict(os.environ, **env), capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited with {out.returncode}:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_tables(family: Family, rows: list[dict]) -> None:
    for i, t in enumerate(family.tables):
        if t.title:
            print(f"\n{t.title}\n")
        elif i:
            print()
        selected = [r for r in rows if t.kind is None or r.get("kind") == t.kind]
        columns = t.columns if OTHER_LOAD in t.columns else [*t.columns, OTHER_LOAD]
        print(report.markdown_table(selected, columns, marked="us"))


def _print_heading(family: Family, run: Run, meta: dict, rows: list[dict]) -> None:
    print(f"# {family.title} benchmark, {meta['date']}, {meta['cpu']} (compressops ISA {meta['isa']}, "
          f"torch {meta['torch']}{family.heading_extra(run)}, LLC {run.llc >> 20} MiB)")
    for line in [*run.notes, *family.legend]:
        print(f"- {line}")
    print("- timing: the implementations of a row run on the same inputs and are timed in turns "
          f"({family.rounds} each); "
          "median over every timed block")
    print(f"- other load: cores other processes kept busy while the row was timed; above {timing.VOID_LOAD} the "
          f"row is void and its time is marked {report.VOID_MARK} (on a 2-core machine one busy neighbour "
          "stalls every 2-thread parallel region)")
    if any(X_PEER in t.columns for t in family.tables):
        print("- x best peer (compressops rows): the fastest peer of the same row over this row")
    busy = [r for r in rows if r.get("void")]
    if busy:
        print(f"- WARNING: {len(busy)} of {len(rows)} rows were timed while other processes were busy "
              f"(up to {max(r['other_load'] for r in busy):.2f} cores); rerun on a quiet machine")
    print()


def main(family: Family, argv: list[str] | None = None) -> int:
    """Parse argv (default sys.argv[1:]), measure, print the tables, write JSON and PNG. Returns 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser(family).parse_args(argv)
    if args.isa:
        co.set_isa(args.isa)
    run = settings(family, args)
    family.configure(run)
    rows = collect(family, run)
    if args.child:
        print(json.dumps(rows))
        return 0
    meta = {"family": family.name, "date": datetime.date.today().isoformat(), "cpu": cpu_model(), "isa": co.isa(),
            "available_isas": co.available_isas(), "torch": torch.__version__, "llc_bytes": run.llc,
            "notes": run.notes, "shape_set": run.shape_set, "threads": run.threads_list,
            "min_run_time": run.min_run_time, "quick": run.quick, "smoke": run.smoke, "cold": run.cold,
            **family.meta(run)}
    _print_heading(family, run, meta, rows)
    if family.main_heading and family.variants:
        print(f"## {family.main_heading.format(isa=meta['isa'])}\n")
    print_tables(family, rows)
    saved = [dict(r, table=family.main_table) for r in rows] if family.variants else rows
    for v in family.variants:
        if run.smoke or getattr(args, "no_" + v.name.replace("-", "_")):
            continue
        variant_rows = rows_in_subprocess(family, argv, v.env)
        print(f"\n## {v.heading}\n")
        print_tables(family, variant_rows)
        saved += [dict(r, table=v.name) for r in variant_rows]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{family.stem}_{run.shape_set}"
    report.write_json(out / f"{stem}.json", meta, saved)
    plotted = report.plot_speedups(out / f"{stem}.png", rows, f"{family.title}, {meta['cpu']}, {meta['date']}",
                                   family.plot_key, family.plot_ylabel, family.plot_group)
    print(f"\nwrote {out / (stem + '.json')}" + (f" and {stem}.png" if plotted else ""))
    family.summary(rows, run)
    return 0


@dataclass
class Target:
    """An issue's target: `baseline` over `ours` at one shape, at least `ratio`."""

    label: str
    shape: str
    ours: str  # label prefixes
    baseline: str
    baseline_label: str
    ratio: float
    optional: bool = False  # a missing baseline row (a peer not installed) skips the line


def print_targets(rows: list[dict], heading: str, targets: list[Target], threads: int = 2) -> None:
    """One PASS/MISS line per target, measured at `threads`, never asserted."""
    def us(shape, prefix):
        return next((r["us"] for r in rows if r["shape"] == shape and r["impl"].startswith(prefix)
                     and r["threads"] == threads), None)

    print(f"\n{heading}")
    missing = set()
    for t in targets:
        ours, base = us(t.shape, t.ours), us(t.shape, t.baseline)
        if base is None and t.optional and ours is not None:
            continue
        if ours is None or base is None:
            if t.label not in missing:
                print(f"  {t.label}: not measured in this run")
            missing.add(t.label)
            continue
        verdict = "PASS" if base / ours >= t.ratio else "MISS"
        print(f"  {t.label}: {base / ours:.2f}x faster than {t.baseline_label} (target >= {t.ratio}x): {verdict}")
