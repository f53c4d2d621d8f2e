"""Roles and the one table that says which role every route needs.

Four roles, each allowed what the one below it is: ``viewer`` reads everything
(queue, dataset, fleet, models, drift), ``reviewer`` also labels, edits,
rejects and undoes, ``publisher`` also publishes, rolls back, controls
rollouts and rounds, sends agent commands and configuration bundles,
``admin`` also manages accounts, reads the audit log, changes the project's
labels and imports from the server's disk.

``RULES`` is the only place a route's role is written down. ``access.authorize``
(run by ``auth.require_user``, which every authenticated route depends on)
looks the request up here; a route missing from the table needs ``admin``
(fail closed), and tests/test_roles.py fails until it is listed. Public routes
(login, health, model downloads, static files) never reach the table.
Pure data and functions: no I/O, no threads.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass


class Role(enum.IntEnum):
    """Ordered: a higher role may do everything a lower one may."""

    VIEWER = 1
    REVIEWER = 2
    PUBLISHER = 3
    ADMIN = 4

    @classmethod
    def parse(cls, name: str) -> "Role":
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(f"unknown role {name!r}: one of {', '.join(ROLE_NAMES)}") from None

    @property
    def label(self) -> str:
        return self.name.lower()


ROLE_NAMES = tuple(r.label for r in Role)
V, R, P, A = Role.VIEWER, Role.REVIEWER, Role.PUBLISHER, Role.ADMIN


@dataclass(frozen=True)
class Rule:
    method: str
    path: str  # the route's template, as in the OpenAPI document
    role: Role
    audit: str | None = None  # the action name the audit log records; None: not recorded


def _r(method: str, path: str, role: Role, audit: str | None = None) -> Rule:
    return Rule(method, path, role, audit)


RULES: tuple[Rule, ...] = (
    # reading: viewer
    _r("GET", "/api/project", V), _r("GET", "/api/queue", V), _r("GET", "/api/labels/pending", V),
    _r("GET", "/api/items/{item_id}", V), _r("GET", "/api/images/{item_id}", V),
    _r("GET", "/api/dataset/stats", V), _r("GET", "/api/storage", V), _r("GET", "/api/fleet", V), _r("GET", "/api/dead_letters", V),
    _r("GET", "/api/progress", V), _r("GET", "/api/assist", V), _r("GET", "/api/commands/{command_id}", V),
    _r("GET", "/api/commands", V), _r("GET", "/api/groups", V), _r("GET", "/api/groups/{group}/bundles", V),
    _r("GET", "/api/models/rounds", V), _r("GET", "/api/models", V),
    _r("GET", "/api/models/by-example/{example_id}", V), _r("GET", "/api/models/{name}/compare", V),
    _r("GET", "/api/models/{name}/rollout", V), _r("GET", "/api/models/{name}/{version}", V),
    _r("GET", "/api/models/{name}/{version}/examples", V), _r("GET", "/api/drift", V),
    _r("GET", "/api/drift/{agent_id}", V), _r("GET", "/metrics", V), _r("GET", "/api/me", V),
    _r("POST", "/api/logout", V), _r("GET", "/openapi.json", V), _r("GET", "/docs", V),
    # pages (pages.py, users.py): a viewer sees every page but Users and Audit
    _r("GET", "/review", V), _r("GET", "/dataset", V), _r("GET", "/fleet", V), _r("GET", "/models", V),
    _r("GET", "/drift", V),
    # labelling and review: reviewer
    _r("POST", "/api/items/{item_id}/label", R, "label"), _r("POST", "/api/undo", R, "undo"),
    _r("POST", "/api/items/{item_id}/accept-prelabel", R, "accept_prelabel"),
    _r("POST", "/api/assist/run", R, "assist_run"), _r("POST", "/api/labels/dismiss", R, "dismiss_label"),
    _r("GET", "/api/export", R, "export"),
    # changing what agents run: publisher
    _r("POST", "/api/models/rounds", P, "start_round"), _r("POST", "/api/models/rounds/cancel", P, "cancel_round"),
    _r("POST", "/api/models/{name}/rollout/pause", P, "rollout_pause"),
    _r("POST", "/api/models/{name}/rollout/resume", P, "rollout_resume"),
    _r("POST", "/api/models/{name}/rollout/abort", P, "rollout_abort"),
    _r("POST", "/api/models/{name}/rollout/cancel", P, "rollout_cancel"),
    _r("POST", "/api/models/{name}/{version}/publish", P, "publish"),
    _r("POST", "/api/models/{name}/rollback", P, "rollback"),
    _r("POST", "/api/agents/{agent_id}/commands", P, "command"),
    _r("POST", "/api/groups/{group}/commands", P, "command"),
    _r("POST", "/api/groups/{group}/bundles", P, "bundle_push"),
    _r("POST", "/api/groups/{group}/bundles/rollback", P, "bundle_rollback"),
    # accounts, audit, project configuration, imports from the server's disk: admin
    _r("POST", "/api/labels/approve", A, "approve_label"), _r("POST", "/api/import", A, "import"),
    _r("POST", "/api/import/unlabelled", A, "import_unlabelled"),
    _r("GET", "/api/users", A), _r("POST", "/api/users", A), _r("POST", "/api/users/{name}/role", A),
    _r("POST", "/api/users/{name}/disable", A), _r("POST", "/api/users/{name}/enable", A),
    _r("POST", "/api/users/{name}/rotate-token", A), _r("POST", "/api/users/{name}/password", A),
    _r("GET", "/api/audit", A), _r("GET", "/users", A), _r("GET", "/audit", A),
)


@functools.lru_cache(maxsize=1)
def _compiled() -> tuple[tuple[str, re.Pattern[str], Rule], ...]:
    out = []
    for rule in RULES:
        pattern = re.sub(r"\\\{[A-Za-z_][A-Za-z0-9_]*\\\}", "[^/]+", re.escape(rule.path))
        out.append((rule.method, re.compile(f"^{pattern}$"), rule))
    return tuple(out)


def rule_for(method: str, path: str) -> Rule | None:
    """The rule of a request (HEAD reads as GET); of several matching templates, the strictest."""
    method = "GET" if method == "HEAD" else method
    found = [rule for m, rx, rule in _compiled() if m == method and rx.match(path)]
    return max(found, key=lambda r: r.role) if found else None


def required(method: str, path: str) -> Role:
    """The role a request needs: its rule's, or admin for a route nobody listed (fail closed)."""
    rule = rule_for(method, path)
    return rule.role if rule is not None else Role.ADMIN
