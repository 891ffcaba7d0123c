"""Which seeds may be averaged together, and which runs are the paper's own run: the one rule that the
leaderboard (and any check against the papers' claims) applies, written once.

Integrity rule 4 of DESIGN.md. Seeds pool only when they are the same experiment: the same method,
dataset and profile, the same resolved config (its hash covers the profile's settings), the same
initial weights (by content, not by path) and the same code (commit, and the same uncommitted diff
when the tree was dirty). A claim stands only beside a run that is what the paper ran: the paper
profile, the paper's config for that dataset, the paper's initial weights, a clean tree, and no
reason written in the adapter why the harness cannot run the paper's version (`not_comparable`).

The facts come from the record (benchmark.engine.run_identity writes them). A record written before
they existed (schema 1) is never the paper's run, and pools only with records whose config, weights
path and commit text agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from benchmark.engine.run_identity import (
    config_hash,
    describe_init,
    init_identity,
    record_execution,
)

PAPER_PROFILE = "paper"
POOL_FIELDS = ("config", "init", "commit")  # beside method, dataset and profile


def commit_key(env: Mapping[str, Any]) -> str:
    """The code a record ran: the commit, and for a dirty tree the hash of its changes."""
    commit = str(env.get("commit") or "unknown commit")
    if env.get("dirty"):
        diff = env.get("diff_sha256")
        return f"{commit}+changes:{diff}" if diff else f"{commit}+unknown changes"
    return commit


def short_commit(env: Mapping[str, Any]) -> str:
    """The commit for a table: 12 hex digits, and what the tree held beside it."""
    commit = env.get("commit")
    if not commit:
        return "unknown commit"
    text = str(commit)[:12]
    if env.get("dirty"):
        diff = env.get("diff_sha256")
        text += f"+uncommitted changes ({str(diff)[:8]})" if diff else "+uncommitted changes"
    return text


def record_config_hash(record: Mapping[str, Any]) -> str:
    """The record's config hash; computed from its config and profile settings when an older record
    has none."""
    if record.get("config_hash"):
        return str(record["config_hash"])
    if isinstance(record.get("config"), Mapping):
        return config_hash(record["config"], record.get("profile_settings") or {},
                           record_execution(record))
    return "unknown config"


def record_init(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """The record's `init`; for an older record, what its profile and `weights` field say."""
    init = record.get("init")
    if isinstance(init, Mapping):
        return init
    settings = record.get("profile_settings") or {}
    if settings.get("pretrained") is False:
        return {"key": "random", "description": describe_init("random")}
    weights = record.get("weights")
    return {"key": "unrecorded", "file": weights,
            "description": f"weights not recorded by content ({weights or 'no --weights given'})"}


def pool_key(record: Mapping[str, Any]) -> tuple[str, ...]:
    """Records with equal keys are seeds of one experiment and may share a mean."""
    init = record_init(record)
    identity = init_identity(init) if init.get("key") != "unrecorded" else f"path:{init.get('file')}"
    return (str(record["method"]), str(record["dataset"]), str(record["profile"]),
            record_config_hash(record), identity, commit_key(record.get("environment") or {}))


def _value(value: Any) -> str:
    return "unset" if value is None else str(value)


def paper_run_gaps(record: Mapping[str, Any]) -> list[str]:
    """Why this run is not what the paper ran, in words; empty when it is. (Whether a claim for it
    exists at all, and matches its backbone and camera use, is the claims' side.)"""
    gaps = []
    if record.get("profile") != PAPER_PROFILE:
        gaps.append(f"{record.get('profile')} profile, not the paper's")
    facts = record.get("paper_run")
    if not isinstance(facts, Mapping):
        gaps.append(f"the record (schema {record.get('schema', '?')}) predates run-identity facts")
        return gaps
    reason = facts.get("not_comparable")
    if reason:
        gaps.append(f"not comparable: {reason}")
    differs = facts.get("config_differs") or {}
    if differs:
        gaps.append("config differs from the paper's: " + ", ".join(
            f"{k} {_value(v.get('run'))} (paper {_value(v.get('paper'))})"
            for k, v in sorted(differs.items())))
    init = record_init(record)
    if init.get("key") != facts.get("init"):
        gaps.append(f"starts from {init.get('description') or init.get('key')}, the paper from "
                    f"{describe_init(str(facts.get('init')))}")
    env = record.get("environment") or {}
    if env.get("dirty") is not False:
        gaps.append("uncommitted changes" if env.get("dirty") else "commit state unknown")
    return gaps


def pool_differences(record: Mapping[str, Any], reference: Mapping[str, Any]) -> list[str]:
    """What separates `record`'s experiment from `reference`'s (same method), in words."""
    out = []
    if record_config_hash(record) != record_config_hash(reference):
        mine, theirs = record.get("config") or {}, reference.get("config") or {}
        keys = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        text = ", ".join(f"{k} {_value(mine.get(k))} (vs {_value(theirs.get(k))})" for k in keys)
        mine_p, theirs_p = record.get("profile_settings") or {}, reference.get("profile_settings") or {}
        keys_p = sorted(k for k in set(mine_p) | set(theirs_p) if mine_p.get(k) != theirs_p.get(k))
        text = ", ".join(filter(None, [text, ", ".join(
            f"profile {k} {_value(mine_p.get(k))} (vs {_value(theirs_p.get(k))})" for k in keys_p)]))
        out.append("config: " + (text or "hash differs"))
    a, b = record_init(record), record_init(reference)
    if pool_key(record)[4] != pool_key(reference)[4]:
        sha = a.get("sha256")
        out.append(f"init: {a.get('description') or a.get('key')}"
                   + (f" (sha256 {str(sha)[:12]})" if sha else "")
                   + f" (vs {b.get('description') or b.get('key')})")
    env, ref_env = record.get("environment") or {}, reference.get("environment") or {}
    if commit_key(env) != commit_key(ref_env):
        out.append(f"code: {short_commit(env)} (vs {short_commit(ref_env)})")
    return out
