"""``edgeloop users add|list|disable|enable|set-role|rotate-token|password``: accounts, on the server's store.

Runs on the server's machine against its database (``--config`` or
``--data-dir``, like ``edgeloop dataset``), so it also works when no admin can
sign in: it is how the first admin is made, and how a lost one is recovered.
Every change is audited (via ``cli``, the operating-system user as the actor).
A token is printed once, on stdout; messages go to stderr.

    edgeloop users add alice --role admin --config server.toml      # asks for a password
    echo "$PASSWORD" | edgeloop users add ci --role publisher --password-stdin
    edgeloop users add robot --role reviewer --no-password           # token only
    edgeloop users set-role bob viewer
    edgeloop users rotate-token robot
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

from trainer.store import accounts, audit

ROLES = accounts.ROLES


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 2)[2]
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="server TOML whose store to use")
    common.add_argument("--data-dir", type=Path, help="the store's folder (default: store.data_dir of --config)")
    sub = parser.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", parents=[common], help="add an account and print its API token once")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ROLES)
    _password_options(add)
    sub.add_parser("list", parents=[common], help="every account (no secrets)").add_argument(
        "--json", action="store_true", help="print JSON")
    for name, help_ in (("disable", "disable an account: sessions and token stop at once"),
                        ("enable", "enable a disabled account"),
                        ("rotate-token", "print a new API token once; the old one stops working")):
        sub.add_parser(name, parents=[common], help=help_).add_argument("name")
    role = sub.add_parser("set-role", parents=[common], help="change an account's role")
    role.add_argument("name")
    role.add_argument("role", choices=ROLES)
    pw = sub.add_parser("password", parents=[common], help="set an account's password")
    pw.add_argument("name")
    _password_options(pw, allow_none=False)


def _password_options(parser: argparse.ArgumentParser, allow_none: bool = True) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--password-stdin", action="store_true", help="read the password from stdin's first line")
    if allow_none:
        group.add_argument("--no-password", action="store_true", help="token-only account (automation)")


def _password(args: argparse.Namespace) -> str | None:
    if getattr(args, "no_password", False):
        return None
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise accounts.AccountError("no terminal to ask for a password: use --password-stdin or --no-password")
    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        raise accounts.AccountError("the two passwords differ")
    return first


def _open_store(args: argparse.Namespace):
    from trainer.server.config import load_config
    from trainer.store import Store

    cfg = load_config(args.config).store
    url = cfg.store_url() if hasattr(cfg, "store_url") else None  # PostgreSQL or SQLite (trainer/store/sql.py)
    if args.data_dir is not None:
        return Store(args.data_dir)
    return Store(cfg.data_dir, url=url) if url else Store(cfg.data_dir)


def _apply(store, args: argparse.Namespace, password: str | None):
    """The change and its audit row in one transaction."""
    actor = f"{getpass.getuser()}@cli"
    name = args.name
    hashed = accounts.hash_password(password) if password is not None else None

    def tx(db):
        if args.action == "add":
            out = accounts.create(db, accounts.check_name(name), args.role, hashed)
        elif args.action == "set-role":
            out = accounts.set_role(db, name, args.role)
        elif args.action in ("disable", "enable"):
            out = accounts.set_disabled(db, name, args.action == "disable")
        elif args.action == "rotate-token":
            out = accounts.rotate_token(db, name)
        else:
            out = accounts.set_password(db, name, hashed)
        detail = {"role": args.role} if hasattr(args, "role") else {}
        audit.record(db, actor, "cli", "local", "user_" + args.action.replace("-", "_"), name, 200, detail)
        return out
    return store.write(tx)


def run(args: argparse.Namespace) -> int:
    try:
        password = _password(args) if args.action in ("add", "password") else None
        with _open_store(args) as store:
            if args.action == "list":
                rows = [a.to_dict() for a in accounts.all_accounts(store.db.read())]
                if args.json:
                    print(json.dumps(rows, indent=2))
                for r in rows if not args.json else []:
                    print(f"{r['name']:<24} {r['role']:<10} {'disabled' if r['disabled'] else 'enabled':<9}"
                          f" {'password' if r['has_password'] else 'token only'}")
                return 0
            out = _apply(store, args, password)
    except accounts.AccountError as e:
        print(f"edgeloop users {args.action}: {e.detail}", file=sys.stderr)
        return 1
    except Exception as e:  # a bad config or an unreachable database: one line, not a traceback
        from trainer.server.config import ConfigError

        if not isinstance(e, (ConfigError, OSError)):
            raise
        print(f"edgeloop users: {e}", file=sys.stderr)
        return 2
    if isinstance(out, str):  # a token: stdout, alone, so scripts can capture it
        print(out)
        print(f"that is {args.name}'s API token: it is shown once", file=sys.stderr)
    else:
        print(f"{out.name}: {out.role}, {'disabled' if out.disabled else 'enabled'}", file=sys.stderr)
    return 0
