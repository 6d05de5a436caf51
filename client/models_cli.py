"""``segcam models ...``: manage the model store on disk (SEGCAM_MODEL_DIR or --store)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from shared.model_store import ModelNotFound, ModelStore, Normalization, StoreError, read_labels


def _store(args: argparse.Namespace) -> ModelStore:
    from shared.settings import get_settings

    return ModelStore(Path(args.store) if args.store else get_settings().model_dir)


def _size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    try:
        size = int(h), int(w or h)
    except ValueError:
        raise argparse.ArgumentTypeError("expected HxW or N, e.g. 520x520") from None
    if min(size) < 1:
        raise argparse.ArgumentTypeError("sides must be positive")
    return size


def _floats(text: str) -> tuple[float, float, float]:
    vals = tuple(float(v) for v in text.split(","))
    if len(vals) != 3:
        raise argparse.ArgumentTypeError("expected three comma-separated numbers")
    return vals


def cmd_list(args) -> int:
    store = _store(args)
    print(f"{'name':24} {'default':8} {'versions':20} aliases")
    for name in store.names():
        aliases = ", ".join(f"{a}->{v}" for a, v in sorted(store.aliases(name).items()))
        traffic = store.traffic(name)
        extra = f"  traffic {json.dumps(traffic)}" if traffic else ""
        print(f"{name:24} {store.default_version(name):8} {','.join(store.versions(name)):20} {aliases}{extra}")
    return 0


def cmd_show(args) -> int:
    store = _store(args)
    m = store.resolve(args.ref)
    print(m.model_dump_json(indent=2))
    return 0


def cmd_import(args) -> int:
    # Every check that needs no torch comes first: verifying the weights imports torch and runs
    # the model, seconds that a mistyped name or an existing version should not cost.
    bad_meta = [kv for kv in args.meta if "=" not in kv]
    if bad_meta:
        raise StoreError(f"--meta takes KEY=VALUE, got {bad_meta[0]!r}")
    meta = dict(kv.split("=", 1) for kv in args.meta)
    norm = Normalization(mean=args.mean, std=args.std) if args.mean and args.std else None
    labels = read_labels(Path(args.labels))
    weights = Path(args.weights)
    if not weights.is_file():
        raise StoreError(f"{weights}: no such file")
    store = _store(args)
    version = args.version or store.next_version(args.name)
    store.check_new_version(args.name, version)

    from worker.model_import import import_model

    m = import_model(
        store,
        weights,
        name=args.name,
        architecture=args.arch,
        labels=labels,
        version=version,
        fmt=args.format,
        input_size=args.input_size,
        normalization=norm,
        target_layer=args.target_layer,
        metadata=meta,
    )
    print(f"imported {m.ref} ({m.architecture}, {m.format}, {len(m.labels)} labels) sha256 {m.sha256}")
    return 0


def cmd_alias(args) -> int:
    _store(args).set_alias(args.name, args.version, args.alias)
    print(f"{args.name}:{args.alias} -> {args.version}")
    return 0


def cmd_delete(args) -> int:
    name, _, version = args.ref.partition(":")
    if not version:
        raise StoreError("give the version to delete as NAME:VERSION")
    _store(args).delete_version(name, version)
    print(f"deleted {name}:{version}")
    return 0


def cmd_traffic(args) -> int:
    table = {}
    for kv in args.split:
        key, _, weight = kv.partition("=")
        table[key] = int(weight)
    _store(args).set_traffic(args.name, table)
    print(f"{args.name}: {json.dumps(table) if table else 'no split (default version only)'}")
    return 0


def add_parser(sub) -> None:
    models = sub.add_parser(
        "models",
        help="without a subcommand: the models the API serves; with one: manage the model store on disk",
    )
    models.add_argument("--store", help="model store directory (default: SEGCAM_MODEL_DIR)")
    from client.submit_cli import add_common, cmd_models_remote

    add_common(models)
    models.set_defaults(func=cmd_models_remote)
    msub = models.add_subparsers(dest="models_command")

    msub.add_parser("list", help="models, versions, aliases").set_defaults(func=cmd_list)
    show = msub.add_parser("show", help="a version's manifest: NAME, NAME:VERSION or NAME:ALIAS")
    show.add_argument("ref")
    show.set_defaults(func=cmd_show)

    imp = msub.add_parser("import", help="add a new immutable version")
    imp.add_argument("weights")
    imp.add_argument("--name", required=True)
    imp.add_argument("--arch", required=True, help="torchvision architecture, shapes_unet, or torchscript")
    imp.add_argument("--labels", required=True, help="file: one label per line, or a JSON list")
    imp.add_argument("--version")
    imp.add_argument("--format", choices=["state_dict", "torchscript"], help="default: detected")
    imp.add_argument("--input-size", type=_size, help="HxW or N (default per architecture)")
    imp.add_argument("--mean", type=_floats)
    imp.add_argument("--std", type=_floats)
    imp.add_argument("--target-layer")
    imp.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    imp.set_defaults(func=cmd_import)

    alias = msub.add_parser("alias", help="point NAME:ALIAS at VERSION")
    alias.add_argument("name")
    alias.add_argument("version")
    alias.add_argument("alias")
    alias.set_defaults(func=cmd_alias)

    delete = msub.add_parser("delete", help="delete NAME:VERSION (refused while an alias points at it)")
    delete.add_argument("ref")
    delete.set_defaults(func=cmd_delete)

    tr = msub.add_parser("traffic", help="A/B split for jobs naming no version, e.g. production=90 candidate=10")
    tr.add_argument("name")
    tr.add_argument("split", nargs="*", metavar="ALIAS_OR_VERSION=WEIGHT")
    tr.set_defaults(func=cmd_traffic)

    # ``segcam models import w.pt ... --store DIR`` is how it is typed: accepted after the
    # subcommand too (SUPPRESS: not given there, the value given before it stands).
    for p in msub.choices.values():
        p.add_argument("--store", default=argparse.SUPPRESS, help="model store directory (default: SEGCAM_MODEL_DIR)")


def run(args) -> int:
    if args.models_command is None:
        return args.func(args)
    try:
        return args.func(args)
    except (StoreError, ModelNotFound, FileNotFoundError) as e:
        print(f"segcam models: {e}", file=sys.stderr)
        return 2
    except ValidationError as e:  # a manifest field out of range (--mean, --std, --input-size)
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        print(f"segcam models: {problems}", file=sys.stderr)
        return 2
