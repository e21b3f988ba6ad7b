"""What makes a daemon's job one job: its manifest, and the command that joins it.

A peer that joins with other settings than the job's would train beside it, not in it:
host 1 merges with ``trimmed-mean`` for 30 rounds, the peers that pasted a join command
without those flags merge with ``cs-plus`` for 100, and nobody is told. So the settings
that define the job are (1) stated in every Hello and membership message and compared
(:mod:`gossipfl.wire.job`), and (2) printed in the join command, so that the pasted
command starts a peer of the same job.

The job is: the task and its parameters (or the built-in model, data set and training
settings), the merge rule and its parameters, the topology family and its parameters,
rounds, protocol, codec, seed and mode, and how a shared data set is partitioned. It is
not: addresses, timings, the output directory, anything a peer may choose for itself.
"""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path
from typing import Any

from gossipfl.configfile import literal
from gossipfl.daemon.config import DaemonConfig
from gossipfl.tasks.loading import task_source_digest
from gossipfl.tasks.section import anchored
from gossipfl.wire.job import MAX_JOB_ENTRIES, MAX_JOB_KEY, MAX_JOB_VALUE

_TRAINING = ("rounds", "protocol", "codec", "seed", "mode")
_LEARNING = ("model", "backend", "lr", "momentum", "weight_decay", "batch_size", "local_steps")
_FLAGS = {"rule.name": "--rule", "training.rounds": "--rounds", "task.name": "--task"}


def job_settings(config: DaemonConfig) -> dict[str, Any]:
    """The job-defining settings of ``config``, by the key ``--set`` takes, as configured
    (task parameters as given, not the task's defaults)."""
    out: dict[str, Any] = {}
    if config.task.name.strip():
        out["task.name"] = config.task.name
        out.update({f"task.params.{k}": v for k, v in config.task.params.items()})
    training = config.training
    out.update({f"training.{k}": getattr(training, k) for k in _TRAINING})
    if training.mode == "consensus":
        out["training.dimension"] = training.dimension
    elif not config.task.name.strip():
        out.update({f"training.{k}": getattr(training, k) for k in _LEARNING})
        if training.model == "mlp":
            out["training.hidden"] = training.hidden
    if config.privacy.secure_averaging:  # masked shares are no models: all or none
        out["privacy.secure_averaging"] = True
    out["rule.name"] = config.rule.name
    out.update({f"rule.params.{k}": v for k, v in config.rule.params.items()})
    if not config.topology.roster:
        out["topology.name"] = config.topology.name
        out.update({f"topology.params.{k}": v for k, v in config.topology.params.items()})
    if training.mode != "consensus" and not config.data.file:
        # Peers shard one shared data set by index: they must cut it the same way.
        if not config.task.name.strip():
            out["data.name"] = config.data.name
        out["data.partition"] = config.data.partition
        if config.data.partition == "dirichlet":
            out["data.alpha"] = config.data.alpha
        if config.data.shards is not None:
            out["data.shards"] = config.data.shards
    return out


def job_manifest(config: DaemonConfig) -> dict[str, str]:
    """The manifest a peer of ``config`` states (:mod:`gossipfl.wire.job`).

    A task's parameters enter with their defaults (so that ``lr`` left at its default of
    0.05 and ``lr = 0.05`` written out are the same job), and the task by its short
    label, since the path of its file differs between hosts; a task of a file or module
    enters with a digest of that file's bytes too (``task.source``), since one name can
    hold two versions. Raises the task's own errors if it cannot be built.
    """
    settings = job_settings(config)
    task = config.task.build(base_dir=config.base_dir)
    if task is not None:
        settings = {k: v for k, v in settings.items() if not k.startswith("task.params.")}
        settings["task.name"] = config.task.label
        source = task_source_digest(anchored(config.task.name, config.base_dir))
        if source is not None:
            settings["task.source"] = source
        for name, value in task.settings().items():
            settings[f"task.params.{name}"] = value
    manifest = {_key(k): _text(v) for k, v in settings.items()}
    if len(manifest) > MAX_JOB_ENTRIES:  # fold the task's parameters into one digest
        params = sorted((k, v) for k, v in manifest.items() if k.startswith("task.params."))
        manifest = {k: v for k, v in manifest.items() if not k.startswith("task.params.")}
        manifest["task.params"] = _digest(repr(params))
    return manifest


def join_command(address: str, config: DaemonConfig, *, cwd: Path | None = None) -> str:
    """The command that makes another peer join this job through ``address``: the
    bootstrap address, the network id and every job setting that differs from the
    default, as flags (``--rule``, ``--rounds``, ``--task``) or ``--set key=value``."""
    parts = ["gossipfl", "start", "--bootstrap", address]
    if config.network.network_id != "gossipfl":
        parts += ["--set", f"network.network_id={config.network.network_id}"]
    defaults = job_settings(DaemonConfig())
    for key, value in job_settings(config).items():
        if defaults.get(key) == value:
            continue
        if key == "task.name":
            value = _shown_reference(str(value), cwd or Path.cwd())
        flag = _FLAGS.get(key)
        parts += [flag, _text(value)] if flag else ["--set", f"{key}={_text(value)}"]
    if config.data.file:
        parts += ["--data-file", "YOUR_DATA_FILE"]  # each peer trains on its own
    return shlex.join(parts)


def _shown_reference(reference: str, cwd: Path) -> str:
    """A task file reference relative to ``cwd`` when it lies under it (the other host
    most likely has the same checkout), else as configured."""
    where, sep, attr = reference.rpartition(":")
    if not sep or not where.endswith(".py"):
        return reference
    try:
        return f"{Path(where).relative_to(cwd)}:{attr}"
    except ValueError:
        return reference


def _text(value: Any) -> str:
    """A setting's value as manifest text: as ``--set`` takes it (:func:`literal`),
    hashed when too long or not printable."""
    text = literal(value)
    if len(text) > MAX_JOB_VALUE or not text.isprintable():
        return _digest(text)
    return text


def _key(key: str) -> str:
    if len(key) <= MAX_JOB_KEY and key.isprintable() and " " not in key and "=" not in key:
        return key
    return _digest(key)[:MAX_JOB_KEY]


def _digest(text: str) -> str:
    return "blake2b:" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


__all__ = ["job_manifest", "job_settings", "join_command"]
