"""`easyedit-kne` (also `python -m easyedit_kne`): the package's commands.

    easyedit-kne knowedit method=KNE data=zsre data.size=8 ...   the KnowEdit runner (Hydra overrides, -m sweeps)
    easyedit-kne compare RESULTS_DIR ... [--common]               tables, CSV and plots of finished runs
    easyedit-kne claims RESULTS_ROOT --out docs/claims.md         the paper's analyses (§4.3-4.6) as verdicts
    easyedit-kne localize --hparams smollm2-135m --data F --out E localize a KnowEdit file into an ensemble
    easyedit-kne bench-speed [--quick]                            speed and memory of localization and editing
    easyedit-kne hparams list                                     the hparams YAMLs shipped with the package
    easyedit-kne demo                                             a real KNE edit of SmolLM2-135M
    easyedit-kne smollm2-path                                     build (once) and print SmolLM2's HF folder

Each command is registered by one `add_<name>_parser(sub)` function (listed in COMMANDS); a command whose
arguments belong to another parser (Hydra's, compare's, the speed bench's) sets `passthrough=True` and gets
the rest of the command line untouched.
"""

from __future__ import annotations

import argparse
import sys


# ------------------------------------------------------------------------------------------------ demo
def _demo(args) -> int:
    from .demo import run
    from .hparams import resolve_hparams_file

    run(args.hparams or resolve_hparams_file("KNE", "smollm2-135m-batch"), args.out)  # a batch edit
    return 0


def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="edit SmolLM2-135M on a small fact set and print before/after")
    p.add_argument("--hparams", default=None, help="KNE hparams YAML or shipped name (default: smollm2-135m-batch)")
    p.add_argument("--out", default="results/demo.json")
    p.set_defaults(fn=_demo)


# -------------------------------------------------------------------------------------------- localize
def _localize(args) -> int:
    from .distributed import localize_distributed
    from .hparams import KNEHyperParams
    from .knowedit import load_knowedit
    from .models import load_model

    hparams = KNEHyperParams.from_hparams(args.hparams)
    model, tok = load_model(args.model or hparams.model_name)
    requests = load_knowedit(args.data, data_type=args.data_type, size=args.size or None)
    ensemble = localize_distributed(model, tok, requests, hparams)  # plain localize() outside torchrun
    if ensemble is None:  # a torchrun rank other than 0: rank 0 writes the ensemble
        return 0
    ensemble.save(args.out)
    print(f"{ensemble} from {len(requests)} items -> {args.out}")
    return 0


def add_localize_parser(sub) -> None:
    p = sub.add_parser("localize", help="localize a KnowEdit file into a saved ensemble")
    p.add_argument("--hparams", required=True, help="KNE hparams: a YAML path or a shipped name (hparams list)")
    p.add_argument("--data", required=True, help="KnowEdit JSON file")
    p.add_argument("--data-type", default=None, help="zsre | counterfact | recent | wikibio (default: guess)")
    p.add_argument("--size", type=int, default=0, help="first N items (0 = all)")
    p.add_argument("--model", default=None, help="model path or config name (default: hparams model_name)")
    p.add_argument("--out", required=True, help="ensemble file (.safetensors)")
    p.set_defaults(fn=_localize)


# ---------------------------------------------------------------------------------------- smollm2-path
def _smollm2(args) -> int:
    from .models import smollm2_hf_dir

    print(smollm2_hf_dir())
    return 0


def add_smollm2_parser(sub) -> None:
    p = sub.add_parser("smollm2-path", help="build (once) and print the SmolLM2-135M Hugging Face folder")
    p.set_defaults(fn=_smollm2)


# --------------------------------------------------------------------------------------------- hparams
def _hparams_list(args) -> int:
    from .hparams import hparams_root, shipped_hparams

    algs = [args.alg] if args.alg else ["KNE", "FiNE"]
    print(f"# {hparams_root()}")
    for alg in algs:
        for name, path in shipped_hparams(alg).items():
            print(f"{alg}\t{name}\t{path}")
    return 0


def add_hparams_parser(sub) -> None:
    p = sub.add_parser("hparams", help="the hparams YAMLs shipped with the package")
    hsub = p.add_subparsers(dest="hparams_command", required=True)
    q = hsub.add_parser("list", help="method, name and file of every shipped YAML (from_hparams(name) reads it)")
    q.add_argument("--alg", choices=["KNE", "FiNE"], default=None, help="one method only")
    q.set_defaults(fn=_hparams_list)


# ------------------------------------------------------------------------- commands with their own parser
def _knowedit_main(argv: list[str]) -> int:
    from .bench.run_knowedit import main as hydra_main

    saved = sys.argv
    sys.argv = ["easyedit-kne knowedit", *argv]  # Hydra reads its overrides from sys.argv
    try:
        hydra_main()
    finally:
        sys.argv = saved
    return 0


# name, module whose main(argv) runs it (None: _knowedit_main), help. Imported only when the command runs.
PASSTHROUGH = [
    ("knowedit", None, "the KnowEdit benchmark runner; Hydra overrides follow (method=KNE data=zsre data.size=8 ..., "
                       "-m for sweeps, --help for Hydra's help)"),
    ("compare", "bench.compare", "compare finished runs (RESULTS_DIR ... [--common]; --help)"),
    ("bench-speed", "bench.speed", "speed and memory bench ([--quick] [--out F]; --help)"),
    ("bench-eval", "bench.bench_eval", "evaluation cost, today vs cached + batched (--help)"),
    ("claims", "bench.claims_report", "the paper's analyses as verdicts: RESULTS_ROOT --out docs/claims.md (--help)"),
]


def _forwarder(module: str | None):
    if module is None:
        return _knowedit_main

    def forward(argv: list[str]) -> int:
        from importlib import import_module

        return import_module(f"{__package__}.{module}").main(argv)

    return forward


def _passthrough_parser(name: str, module: str | None, help_text: str):
    def add(sub) -> None:  # the command's own parser reads the rest of the command line
        sub.add_parser(name, add_help=False, help=help_text).set_defaults(passthrough=_forwarder(module))

    add.__name__ = f"add_{name.replace('-', '_')}_parser"
    return add


(add_knowedit_parser, add_compare_parser, add_bench_speed_parser, add_bench_eval_parser,
 add_claims_parser) = (_passthrough_parser(*row) for row in PASSTHROUGH)


def add_edit_parsers(sub) -> None:
    from .edit_cli import add_parsers  # `edit` and `apply`: an edit as a small file

    add_parsers(sub)


def add_tune_parser(sub) -> None:
    from .tuning.study import add_parser  # `tune`: hparams search on the protocol's dev split

    add_parser(sub)


COMMANDS = [add_knowedit_parser, add_compare_parser, add_localize_parser, add_bench_speed_parser, add_bench_eval_parser,
            add_hparams_parser, add_demo_parser, add_smollm2_parser, add_edit_parsers, add_tune_parser,
            add_claims_parser]


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(prog="easyedit-kne", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser, sub


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, sub = build_parser()
    if argv and argv[0] in sub.choices:
        passthrough = sub.choices[argv[0]].get_default("passthrough")
        if passthrough is not None:
            return passthrough(argv[1:])
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
