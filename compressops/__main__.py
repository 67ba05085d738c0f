"""`python -m compressops <command>`: convert a Hugging Face model folder, run a benchmark, print build info.

    python -m compressops convert MODEL_DIR OUT_DIR --config FORMAT   # see `convert --help`
    python -m compressops bench [family] [args]   # a family's benchmark (when none is named, the one
                                                  # whose module sets DEFAULT; see compressops.bench.runner)
    python -m compressops info                    # build and kernel information (the default command)
    python -m compressops --version
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    from compressops import __version__
    from compressops.configs import config_types

    formats = ", ".join(sorted(c.format_name for c in config_types()))
    parser = argparse.ArgumentParser(prog="python -m compressops", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"compressops {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{convert,bench,info}")
    conv = sub.add_parser(
        "convert", help="convert a Hugging Face model folder and save it with its quantization_config",
        description="Load MODEL_DIR (a save_pretrained folder, offline) with transformers, convert it with "
                    "compressops.convert, save it to OUT_DIR with save_pretrained (config.json gets the "
                    "quantization_config that from_pretrained reads back once compressops is imported), copy "
                    "the folder's other files (tokenizer, vocabulary) and print compressops.report.")
    conv.add_argument("model_dir", type=Path, help="the Hugging Face model folder to convert")
    conv.add_argument("out_dir", type=Path, help="where to write the converted model")
    conv.add_argument("--config", required=True,
                      help=f"a format name with its default settings ({formats}), a JSON config "
                           f'({{"format": ..., <fields>}}), a JSON {{"fnmatch pattern": config or null}} mapping, '
                           f"or a file holding either")
    conv.add_argument("--model-class", default=None,
                      help="the transformers class to load with (default: the architecture in config.json, "
                           "else AutoModel)")
    conv.add_argument("--no-progress", action="store_true", help="no progress bar")
    sub.add_parser("bench", help="run a benchmark family (`bench [family] --help` for its options)", add_help=False)
    sub.add_parser("info", help="build info, native library status and kernels per op")
    return parser


def parse_config(text: str):
    """The config a `--config` value names: a format name, JSON text, or a file holding JSON.

    Raises:
        ValueError: an unknown format name, invalid JSON, or an invalid config (the message says which).
    """
    from compressops.configs import config_types
    from compressops.hf_record import config_from_json

    names = {c.format_name: c for c in config_types()}
    if text in names:
        return names[text]()
    path = Path(text)
    if not text.lstrip().startswith(("{", "[")) and path.is_file():
        text = path.read_text()
    if not text.lstrip().startswith("{"):
        raise ValueError(f"--config {text!r}: not a format name (one of {', '.join(sorted(names))}), a JSON object "
                         f"or a file holding one")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--config: invalid JSON ({e})") from None
    try:
        return config_from_json(obj)
    except TypeError as e:
        raise ValueError(f"--config: {e}") from None


def _convert(args) -> int:
    try:
        config = parse_config(args.config)
    except ValueError as e:
        print(f"compressops convert: {e}", file=sys.stderr)
        return 2
    try:
        from compressops.hf import convert_pretrained
    except ImportError as e:
        print(f"compressops convert: {e}", file=sys.stderr)
        return 1
    try:
        _, rep = convert_pretrained(args.model_dir, args.out_dir, config, model_class=args.model_class,
                                    progress=False if args.no_progress else None)
    except (ValueError, TypeError, OSError) as e:
        print(f"compressops convert: {e}", file=sys.stderr)
        return 1
    print(rep)
    print(f"saved to {args.out_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command in argv (default sys.argv[1:]); returns the exit status (2: unknown command,
    family or bad arguments). --help and --version exit 0 (SystemExit, as argparse does)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":  # the family parses its own arguments, --help included
        from compressops.bench.runner import default_family, families

        args = argv[1:]
        found = families()
        family = args.pop(0) if args and not args[0].startswith("-") else default_family(found)
        if family not in found:
            print(f"unknown benchmark family {family!r}; known: {', '.join(sorted(found))}")
            return 2
        return found[family].main(args)
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        if e.code in (0, None):
            raise
        return 2
    if args.command == "convert":
        return _convert(args)
    from compressops.info import main as info

    info()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
