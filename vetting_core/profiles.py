"""Profiles and run plans.

A profile (``quick``, ``deep``, ``soak``, or plugin-added) selects stages and sets
their parameters and thresholds. :func:`plan_run` turns the registry, a profile
name and a host's overrides into the immutable plan of a run: the ordered stage
list with parameters and the threshold rules.

Precedence, lowest first: stage defaults (``"*"`` then each profile of the lineage,
root first) ← profile params (root first; each profile's fragments right after it)
← host overrides. A child profile inherits its parent's fragments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .model import ThresholdRule
from .plugins import Registry, UnknownNameError
from .protocol import PlannedStage
from .records import ProfileSpec


class ProfileError(ValueError):
    pass


@dataclass
class Profile:
    name: str
    description: str = ""
    lineage: list[str] = field(default_factory=list)  # self, parent, grandparent...
    include: set[str] = field(default_factory=set)
    exclude: set[str] = field(default_factory=set)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    thresholds: list[ThresholdRule] = field(default_factory=list)
    non_destructive_only: bool = False
    contributors: list[str] = field(default_factory=list)


class RunPlan(msgspec.Struct, kw_only=True):
    profile: str
    non_destructive: bool
    stages: list[PlannedStage]
    thresholds: list[ThresholdRule]


def _merge_params(into: dict[str, dict[str, Any]], more: Mapping[str, Mapping[str, Any]]) -> None:
    for stage, values in more.items():
        into.setdefault(stage, {}).update(values)


def resolve_profiles(reg: Registry) -> dict[str, Profile]:
    """Resolve ``extends`` chains and apply fragments, in registration order."""
    bases: dict[str, tuple[str, ProfileSpec]] = {}
    fragments: list[tuple[str, ProfileSpec]] = []
    for owner, spec in reg.profile_specs:
        if spec.fragment:
            fragments.append((owner, spec))
        elif spec.name in bases:
            raise ProfileError(
                f"profile {spec.name!r} is registered by both plugin {bases[spec.name][0]!r} "
                f"and plugin {owner!r}; one of them should register a fragment"
            )
        else:
            bases[spec.name] = (owner, spec)

    resolved: dict[str, Profile] = {}

    def resolve(name: str, seen: tuple[str, ...] = ()) -> Profile:
        if name in resolved:
            return resolved[name]
        if name in seen:
            raise ProfileError(
                f"profile {name!r} extends itself: {' → '.join((*seen[seen.index(name):], name))}"
            )
        if name not in bases:
            raise ProfileError(f"profile {seen[-1]!r} extends unknown profile {name!r}")
        owner, spec = bases[name]
        if spec.extends:
            parent = resolve(spec.extends, (*seen, name))
            prof = Profile(
                name=name,
                lineage=[name, *parent.lineage],
                include=set(parent.include),
                exclude=set(parent.exclude),
                params={k: dict(v) for k, v in parent.params.items()},
                thresholds=list(parent.thresholds),
                non_destructive_only=parent.non_destructive_only,
            )
        else:
            prof = Profile(name=name, lineage=[name])
        prof.description = spec.description
        prof.contributors.append(owner)
        _apply(prof, spec)
        # fragments complete the profile before any child copies it, so a profile
        # extending "deep" inherits what plugins added to "deep"
        for frag_owner, frag in fragments:
            if frag.name == name:
                prof.contributors.append(frag_owner)
                _apply(prof, frag)
        resolved[name] = prof
        return prof

    for owner, spec in fragments:
        if spec.name not in bases:
            raise ProfileError(
                f"plugin {owner!r} extends unknown profile {spec.name!r} "
                f"(known: {', '.join(sorted(bases))})"
            )
    for name in bases:
        resolve(name)
    return resolved


def _apply(prof: Profile, spec: ProfileSpec) -> None:
    prof.include |= set(spec.include)
    prof.exclude |= set(spec.exclude)
    prof.include -= set(spec.exclude)
    _merge_params(prof.params, spec.params)
    prof.thresholds.extend(spec.thresholds)
    prof.non_destructive_only |= spec.non_destructive_only


def _rule_key(r: ThresholdRule) -> tuple[str, str, str, str]:
    return (r.stage, r.kind, r.key, r.op)


def plan_run(
    reg: Registry,
    profile: str,
    *,
    non_destructive: bool = False,
    host_params: Mapping[str, Mapping[str, Any]] | None = None,
    host_thresholds: Sequence[ThresholdRule] = (),
    only: Sequence[str] | None = None,
) -> RunPlan:
    """The immutable plan of one run. ``only`` restricts the plan to named stages
    (unknown names raise :class:`UnknownNameError`)."""
    profiles = resolve_profiles(reg)
    if profile not in profiles:
        raise ProfileError(f"unknown profile {profile!r} (known: {', '.join(sorted(profiles))})")
    prof = profiles[profile]
    if prof.non_destructive_only:
        non_destructive = True
    for name in [*prof.include, *(only or ())]:
        reg.stage(name)  # raises UnknownNameError naming the installed stages
    lineage = set(prof.lineage)
    chosen = [
        spec
        for spec in reg.stages.values()
        if (lineage & set(spec.profiles) or spec.name in prof.include)
        and spec.name not in prof.exclude
        and (only is None or spec.name in only)
    ]
    chosen.sort(key=lambda s: (s.order, s.name))
    host_params = host_params or {}
    stages: list[PlannedStage] = []
    rules: dict[tuple[str, str, str, str], ThresholdRule] = {}
    for ordinal, spec in enumerate(chosen):
        params: dict[str, Any] = dict(spec.params.get("*", {}))
        for name in reversed(prof.lineage):
            params.update(spec.params.get(name, {}))
        params.update(prof.params.get(spec.name, {}))
        params.update(host_params.get(spec.name, {}))
        stages.append(
            PlannedStage(
                name=spec.name,
                ordinal=ordinal,
                params=params,
                runs_on=spec.runs_on,
                destructive=spec.destructive and not non_destructive,
                timeout_s=float(params.get("timeout_s", spec.timeout_s)),
            )
        )
        for rule in spec.thresholds:
            scoped = msgspec.structs.replace(rule, stage=spec.name) if rule.stage == "*" else rule
            rules[_rule_key(scoped)] = scoped
    for rule in prof.thresholds:
        rules[_rule_key(rule)] = rule
    for rule in host_thresholds:
        rule = msgspec.structs.replace(rule, source="host_override")
        rules[_rule_key(rule)] = rule
    return RunPlan(
        profile=profile,
        non_destructive=non_destructive,
        stages=stages,
        thresholds=list(rules.values()),
    )


__all__ = ["Profile", "ProfileError", "RunPlan", "UnknownNameError", "plan_run", "resolve_profiles"]
