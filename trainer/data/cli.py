"""``edgeloop dataset import|export``: move datasets between the usual formats and the server's store.

    edgeloop dataset import voc ../shared/data/detection/raccoon --data-dir ./edgeloop-data
    edgeloop dataset import imagefolder ../shared/data/classification/hymenoptera
    edgeloop dataset import coco annotations.json --images images/
    edgeloop dataset export yolo out/ --split train
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import FormatError, ReadReport
from .store_io import FORMATS, TASK_OF, export_store, import_examples, read_dataset


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, default=None,
                        help="the store (default: store.data_dir of --config, else ./edgeloop-data)")
    common.add_argument("--config", type=Path, help="server TOML whose store.data_dir to use")
    sub = parser.add_subparsers(dest="action", required=True)
    imp = sub.add_parser("import", parents=[common], help="add a labelled dataset to the store")
    imp.add_argument("format", choices=FORMATS)
    imp.add_argument("path", type=Path, help="dataset folder (the JSON file for coco)")
    imp.add_argument("--images", type=Path, help="coco: folder of the images (default: images/ beside the JSON)")
    exp = sub.add_parser("export", parents=[common], help="write the store's labelled examples")
    exp.add_argument("format", choices=FORMATS)
    exp.add_argument("out", type=Path, help="output folder (must not exist or be empty)")
    exp.add_argument("--split", choices=("train", "val", "test"), help="only this split")


def _data_dir(args: argparse.Namespace) -> Path:
    if args.data_dir:
        return args.data_dir
    from trainer.server.config import load_config

    return load_config(args.config).store.data_dir


def run(args: argparse.Namespace) -> int:
    from trainer.store import Store, StoreError

    try:
        data_dir = _data_dir(args)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    with Store(data_dir) as store:
        try:
            if args.action == "import":
                return _import(store, args)
            n = export_store(store, args.format, args.out, args.split)
            print(f"exported {n} examples as {args.format} to {args.out}")
            return 0
        except (FormatError, StoreError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1


def _import(store, args: argparse.Namespace) -> int:
    report = ReadReport()
    examples = read_dataset(args.format, args.path, args.images, report)
    added = import_examples(store, examples, fmt=args.format, task=TASK_OF[args.format], report=report)
    print(f"{args.path}: {report.summary()}; {added} new examples in {store.data_dir}")
    for path, reason in report.skipped[:20]:
        print(f"  skipped {path}: {reason}")
    for where, reason in report.box_notes[:20]:
        print(f"  dropped a box in {where}: {reason}")
    return 0
