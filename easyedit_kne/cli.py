"""`easyedit-kne` command: demo, localize a dataset into a saved ensemble, SmolLM2 folder path."""

from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    from .demo import run

    run(args.hparams, args.out)
    return 0


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


def _smollm2(args) -> int:
    from .models import smollm2_hf_dir

    print(smollm2_hf_dir())
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="easyedit-kne", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="edit SmolLM2-135M on a small fact set and print before/after")
    p.add_argument("--hparams", default=None, help="KNE hparams YAML (default hparams/KNE/smollm2-135m.yaml)")
    p.add_argument("--out", default="results/demo.json")
    p.set_defaults(fn=_demo)
    p = sub.add_parser("localize", help="localize a KnowEdit file into a saved ensemble")
    p.add_argument("--hparams", required=True)
    p.add_argument("--data", required=True, help="KnowEdit JSON file")
    p.add_argument("--data-type", default=None, help="zsre | counterfact | recent | wikibio (default: guess)")
    p.add_argument("--size", type=int, default=0, help="first N items (0 = all)")
    p.add_argument("--model", default=None, help="model path or config name (default: hparams model_name)")
    p.add_argument("--out", required=True, help="ensemble file (.safetensors)")
    p.set_defaults(fn=_localize)
    p = sub.add_parser("smollm2-path", help="build (once) and print the SmolLM2-135M Hugging Face folder")
    p.set_defaults(fn=_smollm2)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
