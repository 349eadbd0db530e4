"""Distribution strategies with no hardware branches in experiment code.

``auto``: MirroredStrategy over the visible GPUs when there are 2+, else the
default strategy. ``cpu_devices=N`` splits the CPU into N logical devices and
mirrors over them (a correctness check of the distributed path on a laptop or CI;
FACTS.md: it is slower than one device). ``multi_worker`` reads ``TF_CONFIG``.
"""
from __future__ import annotations

import json
import os

import tensorflow as tf

from cxr_tf.errors import CXRConfigError


def make_strategy(name: str = "auto", cpu_devices: int = 0) -> tf.distribute.Strategy:
    """Build the strategy. Call before any other TensorFlow op when ``cpu_devices > 1``."""
    if cpu_devices and cpu_devices > 1:
        cpus = tf.config.list_physical_devices("CPU")
        try:
            tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * cpu_devices)
        except RuntimeError:
            # Already initialised: fine if the same split was made earlier.
            pass
        logical = tf.config.list_logical_devices("CPU")
        if len(logical) < cpu_devices:
            raise CXRConfigError(
                f"cpu_devices={cpu_devices} needs the CPU split before TensorFlow starts; got {len(logical)} devices"
            )
        return tf.distribute.MirroredStrategy([d.name for d in logical[:cpu_devices]])
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise CXRConfigError("--strategy multi_worker needs TF_CONFIG (cluster and task) in the environment")
        try:
            tc = json.loads(os.environ["TF_CONFIG"])
            ok = isinstance(tc, dict) and isinstance(tc.get("cluster"), dict) and isinstance(tc.get("task"), dict)
        except ValueError as e:
            raise CXRConfigError(f"TF_CONFIG is not valid JSON: {e}") from None
        if not ok:
            raise CXRConfigError('TF_CONFIG needs "cluster" and "task" objects, e.g. {"cluster": {"worker": '
                                 '["host0:12345", "host1:12345"]}, "task": {"type": "worker", "index": 0}}')
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "auto":
        # Listing devices initialises the runtime: only here, never before a
        # MultiWorkerMirroredStrategy (collectives must be configured first).
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    raise CXRConfigError(f"unknown strategy {name!r}")


def describe(strategy: tf.distribute.Strategy) -> dict:
    return {
        "strategy": type(strategy).__name__,
        "replicas": int(strategy.num_replicas_in_sync),
        "devices": [d.name for d in tf.config.list_logical_devices() if d.device_type in ("CPU", "GPU")],
    }
