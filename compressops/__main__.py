"""`python -m compressops bench [family] [args]`: a family's benchmark (when none is named, the one whose module
sets DEFAULT; a family is any module of compressops.bench that defines FAMILY and main, see
compressops.bench.runner);
`python -m compressops info`: build and kernel information."""

import sys

def main(argv: list[str] | None = None) -> int:
    """Run the command in argv (default sys.argv[1:]); returns the exit status (2: unknown command or family)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd, args = (argv[0], argv[1:]) if argv else ("info", [])
    if cmd == "bench":
        from compressops.bench.runner import default_family, families

        found = families()
        family = args.pop(0) if args and not args[0].startswith("-") else default_family(found)
        if family not in found:
            print(f"unknown benchmark family {family!r}; known: {', '.join(sorted(found))}")
            return 2
        return found[family].main(args)
    if cmd == "info":
        from compressops.info import main as info

        info()
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
