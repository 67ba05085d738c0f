"""`python -m compressops bench [args]`: the int8 linear benchmark (see compressops.bench.int8_linear);
`python -m compressops info`: build and kernel information."""

import sys


def main() -> int:
    cmd, args = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("info", [])
    if cmd == "bench":
        from compressops.bench.int8_linear import main as bench

        return bench(args)
    if cmd == "info":
        from compressops.info import main as info

        info()
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
