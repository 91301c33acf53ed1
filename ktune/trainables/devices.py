"""Per-trial device set-up: threads, GPU visibility, memory growth and memory limits.

Ray gives a trial ``cpu`` cores and a (possibly fractional) ``gpu``; TensorFlow must be
told before it runs its first op, or it takes every core and all GPU memory. The plan is
computed by a pure function (:func:`plan_devices`, testable without a GPU) and applied by
:func:`apply_device_plan` at the very start of a trial.
"""

from __future__ import annotations

import logging
import math
import shutil
import subprocess
from dataclasses import dataclass

__all__ = [
    "DevicePlan",
    "plan_devices",
    "apply_device_plan",
    "configure_devices",
    "driver_devices",
    "gpu_total_memory_mb",
]

log = logging.getLogger("ktune")


@dataclass(frozen=True)
class DevicePlan:
    """What a trial configures in TensorFlow before its first op."""

    intra_op_threads: int
    inter_op_threads: int
    hide_gpus: bool  # gpu: 0 -> the trial sees no GPU
    memory_growth: bool  # a whole GPU: allocate as needed
    memory_limit_mb: int | None  # a GPU share: a hard cap, so trials can share a card


# What a process on a GPU holds outside TensorFlow's allocator (its CUDA context, cuDNN and
# cuBLAS handles), left out of a fractional trial's share of the card: at most a quarter.
CONTEXT_RESERVE_MB = 768


def plan_devices(
    cpu: float,
    gpu: float,
    *,
    visible_gpus: int,
    total_memory_mb: int | None,
    memory_limit_mb: int | None = None,
) -> DevicePlan:
    """The device plan for a trial given ``cpu`` and ``gpu`` from Ray.

    Args:
        cpu: float. Cores Ray reserved; TensorFlow's intra-op threads (at least 1).
        gpu: float. GPUs Ray reserved; 0 hides every GPU, a fraction caps memory.
        visible_gpus: int. GPUs TensorFlow can see in this process.
        total_memory_mb: int or None. Memory of one visible GPU, when known.
        memory_limit_mb: int or None. An explicit cap (``resources.gpu_memory_mb``).
    """
    threads = max(1, int(math.floor(cpu)))
    inter = min(2, threads)
    if gpu == 0 or visible_gpus == 0:
        return DevicePlan(
            threads, inter, hide_gpus=gpu == 0, memory_growth=False, memory_limit_mb=None
        )
    limit = memory_limit_mb
    if limit is None and gpu < 1 and total_memory_mb:
        # The cap holds TensorFlow's allocator; each process's CUDA context comes on top
        # of it: left out of the share, so the trials sharing a card fit on it.
        share = total_memory_mb * gpu
        limit = int(share - min(CONTEXT_RESERVE_MB, share / 4))
    # TensorFlow refuses memory growth on a device with a memory limit: one or the other.
    return DevicePlan(
        threads, inter, hide_gpus=False, memory_growth=limit is None, memory_limit_mb=limit
    )


def gpu_total_memory_mb() -> int | None:
    """Memory of the first visible GPU in MiB (from nvidia-smi), or None when unknown."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
        return int(out.strip().splitlines()[0])
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        return None


# The plan applied in this process. Ray reuses a trial's worker for the next trial with
# the same resources (``reuse_actors``): TensorFlow is configured once per process.
_applied: DevicePlan | None = None


def apply_device_plan(plan: DevicePlan) -> bool:
    """Applies ``plan``; False (and a warning) if TensorFlow had already initialized.

    True without touching TensorFlow when this process already applied the same plan.
    """
    import tensorflow as tf

    global _applied
    if plan == _applied:
        return True
    try:
        tf.config.threading.set_intra_op_parallelism_threads(plan.intra_op_threads)
        tf.config.threading.set_inter_op_parallelism_threads(plan.inter_op_threads)
        gpus = tf.config.list_physical_devices("GPU")
        if plan.hide_gpus:
            tf.config.set_visible_devices([], "GPU")
        for device in [] if plan.hide_gpus else gpus:
            if plan.memory_limit_mb is not None:
                tf.config.set_logical_device_configuration(
                    device,
                    [tf.config.LogicalDeviceConfiguration(memory_limit=plan.memory_limit_mb)],
                )
            elif plan.memory_growth:
                tf.config.experimental.set_memory_growth(device, True)
    except RuntimeError as e:  # TensorFlow already ran an op in this process
        log.warning("device set-up skipped, TensorFlow already initialized: %s", e)
        return False
    _applied = plan
    return True


def driver_devices() -> None:
    """In ktune's driver (data preparation, test evaluation, export): GPU memory grows as
    needed, instead of TensorFlow's default of taking most of every card at its first op
    while the trials need it. Nothing when TensorFlow already ran an op here (a user's
    own set-up stands)."""
    import tensorflow as tf

    try:
        for device in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(device, True)
    except RuntimeError:
        pass


def configure_devices(cpu: float, gpu: float, memory_limit_mb: int | None = None) -> DevicePlan:
    """Plans and applies this trial's devices; returns the plan."""
    import tensorflow as tf

    visible = len(tf.config.list_physical_devices("GPU"))
    plan = plan_devices(
        cpu,
        gpu,
        visible_gpus=visible,
        total_memory_mb=gpu_total_memory_mb() if visible and 0 < gpu < 1 else None,
        memory_limit_mb=memory_limit_mb,
    )
    apply_device_plan(plan)
    return plan
