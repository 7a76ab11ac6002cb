"""Version pairing: which Flower version the SuperNode runs, given what its SuperLink runs.

Pure: `pair` decides from the Config, the FL_VERSION the SuperLink VM publishes (through
OneGate: a neighbour's value, untrusted, checked here) and the tags of the local
fl-agent/supernode images (observed by boot). Never a silent mismatch:

- nothing published (or no SuperLink VM read): the configured version, unchanged;
- FLOWER_VERSION set: the operator's choice stays; another major.minor published is a
  `flower_version_mismatch` warning on the record (Flower itself may refuse the node);
- FL_SUPERNODE_IMAGE set without FLOWER_VERSION: the operator chose the image; its tag, when it
  reads X.Y.Z, is its version (else the published one is assumed), and another major.minor is a
  `flower_version_mismatch` warning;
- neither set: the published major.minor when the configured version has it; else the newest
  local fl-agent/supernode:<X.Y.Z> of that major.minor; else the node stops with
  `flower_version_unpaired` naming the SuperLink's version and the fix.

A published value that is not X.Y.Z is ignored with a `superlink_version_invalid` warning.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from agent import flower
from agent.config import Config, parse_image_reference
from agent.errors import Problem
from agent.outcome import problem

VERSION_ATTRIBUTE = "FL_VERSION"
MAX_PUBLISHED = 32


@dataclass(frozen=True)
class Pairing:
    """The config to run (its version and image possibly changed) and what to say about it."""

    config: Config
    blocking: Problem | None = None
    warning: Problem | None = None


def pair(config: Config, published: str | None, local_tags: tuple[str, ...]) -> Pairing:
    """The decision described in the module docstring. `local_tags` are the tags of the local
    `fl-agent/supernode` images (X.Y.Z ones count)."""
    if published is None:
        return Pairing(config)
    version = flower.parse_version(published) if len(published) <= MAX_PUBLISHED else None
    if version is None:
        shown = published[:MAX_PUBLISHED].encode("ascii", "replace").decode()
        return Pairing(
            config, warning=problem("superlink_version_invalid", "FL_VERSION", repr(shown))
        )
    theirs = published
    if config.flower_version_set:
        return Pairing(config, warning=_mismatch(config.flower_version, theirs, "FLOWER_VERSION"))
    if config.supernode_image_set:
        return _chosen_image(config, theirs)
    if flower.same_minor(config.flower_version, theirs):
        return Pairing(config)
    local = newest_local(theirs, local_tags)
    if local is None or flower.release_for(local) is None:
        return Pairing(config, blocking=_unpaired(theirs, config.flower_version))
    paired = replace(config, flower_version=local, supernode_image=flower.default_image(local))
    return Pairing(paired)


def newest_local(version: str, tags: tuple[str, ...]) -> str | None:
    """The newest X.Y.Z tag with `version`'s major.minor, or None."""
    same = [t for t in tags if flower.same_minor(t, version)]
    return max(same, key=lambda t: flower.parse_version(t) or (0, 0, 0), default=None)


def _chosen_image(config: Config, theirs: str) -> Pairing:
    parsed = parse_image_reference(config.supernode_image)
    tag = parsed.tag if parsed else None
    ours = tag if tag and flower.release_for(tag) is not None else None
    if ours is None:  # no version in the tag: argv spelled for the SuperLink's release
        if flower.release_for(theirs) is None:
            return Pairing(config, blocking=_unpaired(theirs, config.flower_version))
        return Pairing(replace(config, flower_version=theirs))
    paired = replace(config, flower_version=ours)
    return Pairing(paired, warning=_mismatch(ours, theirs, "FL_SUPERNODE_IMAGE"))


def _mismatch(ours: str, theirs: str, subject: str) -> Problem | None:
    if flower.same_minor(ours, theirs):
        return None
    detail = f"this node runs {ours}, its SuperLink publishes FL_VERSION={theirs}"
    return problem("flower_version_mismatch", subject, detail)


def _unpaired(theirs: str, ours: str) -> Problem:
    minor = ".".join(theirs.split(".")[:2])
    fix = (
        f"load an image {flower.IMAGE_REPOSITORY}:{minor}.<patch> (images/build-supernode.sh), "
        f"or set FLOWER_VERSION (and FL_SUPERNODE_IMAGE) to a {minor}.x release"
    )
    if flower.release_for(theirs) is None:
        fix = f"run the SuperLink on a release from {flower.supported_range()}"
    detail = f"the SuperLink runs Flower {theirs}; this node has {ours} and no {minor}.x image"
    return problem("flower_version_unpaired", "FLOWER_VERSION", detail, fix=fix)
