"""``edgeloop store migrate|info``: move a store between backends; count what a store holds.

    edgeloop store migrate --from sqlite:///srv/edgeloop-data/edgeloop.db --to postgresql://edgeloop@db/edgeloop
    edgeloop store info --store postgresql://edgeloop@db/edgeloop

Stop the server, collectors and workers first: nothing may write to either
side during the copy. The target is migrated to this build's schema; one that
holds any row is refused unless --force (which empties it first). Exit 0 only
when every table's row count and content hash match and every blob's bytes
hash to its key. A password in a URL is better passed as $EDGELOOP_STORE_URL
(used for --to when it is omitted) than on the command line.
"""

from __future__ import annotations

import argparse
import os
import sys

from .backends import URL_ENV, BadStoreURL, redact


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    sub = parser.add_subparsers(dest="action", required=True)
    mig = sub.add_parser("migrate", help="copy every row (examples, blobs, labels, splits, registry, lineage, ...)"
                         " to another store URL and verify counts and content hashes")
    mig.add_argument("--from", dest="source", required=True, help="the store to copy (sqlite:///... or postgresql://)")
    mig.add_argument("--to", dest="target", default=None, help=f"the store to fill (default: ${URL_ENV})")
    mig.add_argument("--force", "--into-nonempty", dest="force", action="store_true",
                     help="empty a target that already holds rows, then copy")
    info = sub.add_parser("info", help="rows per table of a store and its registry")
    info.add_argument("--store", required=True, help="store URL")


def run(args: argparse.Namespace) -> int:
    from .move import MoveError, copy_store, describe

    try:
        if args.action == "info":
            print("\n".join(describe(args.store)))
            return 0
        target = args.target or os.environ.get(URL_ENV)
        if not target:
            print(f"give --to or set ${URL_ENV}", file=sys.stderr)
            return 2
        reports = copy_store(args.source, target, replace=args.force)
    except (BadStoreURL, MoveError) as e:
        print(f"store {args.action}: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a database that cannot be reached: say which, without a traceback
        if type(e).__module__.split(".")[0] not in ("psycopg", "psycopg_pool", "sqlite3"):
            raise
        print(f"store {args.action}: {type(e).__name__}: {str(e).strip()[:300]}", file=sys.stderr)
        return 2
    for report in reports:
        print("\n".join(report.lines()))
    print(f"verified: {redact(target)} holds the same rows as {redact(args.source)}")
    return 0
