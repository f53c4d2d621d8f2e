"""``edgeloop keys generate --out DIR [--force]`` and ``edgeloop keys show --key FILE``."""

from __future__ import annotations

import argparse
import sys

from protocol import ProtocolError


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    gen = sub.add_parser("generate", help="write a new Ed25519 signing key pair")
    gen.add_argument("--out", required=True, metavar="DIR",
                     help="folder for signing_key.pem (mode 0600) and signing_key.pub.pem")
    gen.add_argument("--force", action="store_true", help="replace an existing key pair (agents must be updated)")
    show = sub.add_parser("show", help="print the public key of a private or public key file")
    show.add_argument("--key", required=True, metavar="FILE", help="signing_key.pem or signing_key.pub.pem")


def run(args: argparse.Namespace) -> int:
    from trainer.publish import keys

    try:
        if args.action == "generate":
            files = keys.generate(args.out, force=args.force)
            print(f"private key: {files.private} (keep it on the server; mode 0600)")
            print(f"public key:  {files.public}")
            print(f"agent config ([updates]): trusted_keys = [\"{files.public_b64}\"]")
            return 0
        return _show(args.key)
    except (keys.KeyError_, ProtocolError, OSError) as e:
        print(f"edgeloop keys: {e}", file=sys.stderr)
        return 1


def _show(path: str) -> int:
    from pathlib import Path

    from protocol.manifest import load_public_key
    from trainer.publish import keys

    data = Path(path).read_bytes()
    if b"PRIVATE KEY" in data:
        public = keys.load_signing_key(path).public_key()
    else:
        public = load_public_key(data)
    print(keys.public_b64(public))
    return 0
