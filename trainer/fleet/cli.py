"""``edgeloop agents``: commands and configuration bundles through the server's HTTP API.

    edgeloop agents command AGENT ping|rollback|reload-config|resend-outbox
    edgeloop agents command --group G ping
    edgeloop agents bundle push GROUP settings.toml [--note TEXT]
    edgeloop agents bundle list GROUP
    edgeloop agents bundle rollback GROUP [--to VERSION]
    edgeloop agents groups

It talks to a running server (``--server``, default $EDGELOOP_SERVER_URL or
http://127.0.0.1:8080) with its API token (``--token`` or
$EDGELOOP_SERVER_TOKEN), so the server's rules, records and audit apply.
Exit status: 0 when everything was answered or done, 1 when a command timed
out or failed or the server refused the request, 2 for bad usage or no server.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

TOKEN_ENV = "EDGELOOP_SERVER_TOKEN"
URL_ENV = "EDGELOOP_SERVER_URL"
ACTIONS = {"ping": "ping", "rollback": "rollback", "reload-config": "reload_config", "resend-outbox": "resend_outbox"}


class CliError(Exception):
    def __init__(self, message: str, code: int = 2) -> None:
        self.code = code
        super().__init__(message)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    common = argparse.ArgumentParser(add_help=False)  # every subcommand takes these, after its own name
    common.add_argument("--server", default=os.environ.get(URL_ENV, "http://127.0.0.1:8080"),
                        help=f"the server's base URL (default ${URL_ENV} or http://127.0.0.1:8080)")
    common.add_argument("--token", default=None, help=f"API token (default ${TOKEN_ENV})")
    common.add_argument("--user", default=os.environ.get("USER", "cli"),
                        help="your name for the records, with the bootstrap token only (a personal token names you)")
    common.add_argument("--json", action="store_true", help="print the server's JSON answer")
    sub = parser.add_subparsers(dest="what", required=True, metavar="WHAT")
    cmd = sub.add_parser("command", parents=[common], help="send a command and show each agent's answer")
    cmd.add_argument("agent", nargs="?", help="the agent id (or --group)")
    cmd.add_argument("--group", help="send to every agent of this group")
    cmd.add_argument("action", choices=sorted(ACTIONS), help="what to do")
    cmd.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answers (default 10)")
    cmd.add_argument("--no-wait", action="store_true", help="return once sent; read the outcome later")
    bundle = sub.add_parser("bundle", help="configuration bundles of a group")
    bsub = bundle.add_subparsers(dest="bundle_action", required=True, metavar="ACTION")
    push = bsub.add_parser("push", parents=[common], help="sign and publish new settings for a group")
    push.add_argument("group")
    push.add_argument("file", type=Path, help="the settings: TOML or JSON tables ([sampling], [uplink])")
    push.add_argument("--note", default="", help="why, for people")
    listing = bsub.add_parser("list", parents=[common], help="a group's bundle versions, newest first")
    listing.add_argument("group")
    rollback = bsub.add_parser("rollback", parents=[common],
                               help="re-publish an earlier version's settings as a new version")
    rollback.add_argument("group")
    rollback.add_argument("--to", type=int, help="the version to go back to (default: the previous)")
    sub.add_parser("groups", parents=[common], help="every group with its agents and current bundle")


def _call(args: argparse.Namespace, method: str, path: str, body: dict | None = None, timeout: float = 30.0):
    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        raise CliError(f"no API token: pass --token or set ${TOKEN_ENV}")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(args.server.rstrip("/") + path, data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "X-User": args.user, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        try:
            detail = json.loads(e.read()).get("detail")
        except (ValueError, AttributeError):
            detail = e.reason
        raise CliError(f"the server refused it ({e.code}): {detail}", 1) from e
    except (urllib.error.URLError, OSError) as e:
        raise CliError(f"cannot reach the server at {args.server}: {getattr(e, 'reason', e)}") from e


def _command_line(c: dict) -> str:
    a = c.get("answer") or {}
    if c["state"] == "answered":
        model = f"{a.get('model_name')} v{a.get('model_version')} ({a.get('model_state')})"
        extra = f", config {a['config_group']} v{a['config_version']}" if a.get("config_group") else ""
        detail = f": {a['detail']}" if a.get("detail") else ""
        return f"{c['agent_id']}: answered ({c['id']}) model {model}{extra}{detail}"
    return f"{c['agent_id']}: {c['state']} ({c['id']}){': ' + c['detail'] if c.get('detail') else ''}"


def _command(args: argparse.Namespace) -> int:
    if bool(args.agent) == bool(args.group):
        raise CliError("name one AGENT or --group GROUP")
    body = {"action": ACTIONS[args.action], "timeout_s": args.timeout, "wait": not args.no_wait}
    where = f"/api/groups/{quote(args.group, safe='')}" if args.group else f"/api/agents/{quote(args.agent, safe='')}"
    out = _call(args, "POST", where + "/commands", body, timeout=args.timeout + 30)
    commands = out["commands"] if args.group else [out]
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for c in commands:
            print(_command_line(c))
    ok = {"answered", "sent"} if args.no_wait else {"answered"}
    return 0 if all(c["state"] in ok for c in commands) else 1


def _settings(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as e:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise CliError(f"{path}: {e}") from e


def _bundle(args: argparse.Namespace) -> int:
    group = quote(args.group, safe="")
    if args.bundle_action == "push":
        out = _call(args, "POST", f"/api/groups/{group}/bundles", {"settings": _settings(args.file), "note": args.note})
    elif args.bundle_action == "rollback":
        out = _call(args, "POST", f"/api/groups/{group}/bundles/rollback", {"to": args.to})
    else:
        out = _call(args, "GET", f"/api/groups/{group}/bundles")
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for b in out if isinstance(out, list) else [out]:
        note = f" ({b['note']})" if b.get("note") else ""
        print(f"{b['group']} v{b['version']} by {b['created_by']}{note}: {json.dumps(b['settings'], sort_keys=True)}")
    return 0


def _groups(args: argparse.Namespace) -> int:
    out = _call(args, "GET", "/api/groups")
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for g in out:
        bundle = f"bundle v{g['bundle']['version']}" if g.get("bundle") else "no bundle"
        agents = ", ".join(f"{a['agent_id']} (v{a.get('config_version', '?')})" for a in g["agents"]) or "no agents"
        print(f"{g['group']}: {bundle}; {agents}")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        if args.what == "command":
            return _command(args)
        if args.what == "bundle":
            return _bundle(args)
        return _groups(args)
    except CliError as e:
        print(f"edgeloop agents: {e}", file=sys.stderr)
        return e.code
