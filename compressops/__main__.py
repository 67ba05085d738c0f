"""`python -m compressops bench [family] [args]`: a family's benchmark (int8 by default; see compressops.bench);
`python -m compressops info`: build and kernel information."""

import sys


def main() -> int:
    cmd, args = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("info", [])
    if cmd == "bench":
        # `bench [family] [args]`: int8 when no family is named
        family = args.pop(0) if args and not args[0].startswith("-") else "int8"
        benches = {"int8": "compressops.bench.int8_linear"}
        # [family benches]  (one line per family: benches["<family>"] = "compressops.bench.<module>")
        benches["int4"] = "compressops.bench.int4_linear"
        benches["sparse"] = "compressops.bench.sparse"
        benches["pq"] = "compressops.bench.pq_linear"
        benches["binary"] = "compressops.bench.binary_conv"

        if family not in benches:
            print(f"unknown benchmark family {family!r}; known: {', '.join(benches)}")
            return 2
        import importlib

        return importlib.import_module(benches[family]).main(args)
    if cmd == "info":
        from compressops.info import main as info

        info()
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
