"""MLflow's system metrics for the nodes a run trains on (``tracking.system_metrics``).

One sampler per node (the worker of local rank 0 starts it) logs MLflow's ``system/...`` metrics
into the run every ``tracking.system_metrics_interval_s``: GPU utilisation, memory and power per GPU
(NVML, from nvidia-ml-py), CPU and memory use, disk and network. With several nodes each one's
metrics carry its node, ``system/node<k>/...``. Sampling runs in a thread of its own and stops when
the run ends; a resumed run goes on from the last step it holds.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional


def wanted(mode: str, on_gpu: bool) -> bool:
    """Whether ``tracking.system_metrics = mode`` samples a node that trains on a GPU (``on_gpu``) or not."""
    return mode == "on" or (mode == "auto" and on_gpu)


class SystemMetrics:
    """MLflow's sampler (:class:`mlflow.system_metrics.system_metrics_monitor.SystemMetricsMonitor`)
    logging into run ``run_id`` of the store at ``uri``; :meth:`stop` ends it and delivers the rest."""

    def __init__(self, uri: str, run_id: str, interval_s: float, node: Optional[str] = None,
                 log: Callable[[str], None] = print):
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # MLflow's own lines at start and stop; attn says it once below
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        self._monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, samples_before_logging=1,
                                             resume_logging=True, node_id=node, tracking_uri=uri)
        gpus = sum(getattr(m, "num_gpus", 0) for m in self._monitor.monitors)
        where = f"{node}: " if node else ""
        log(f"{where}system metrics every {interval_s:g} s into MLflow (system/...; {gpus} GPU(s) seen by NVML)")
        self._monitor.start()

    def stop(self) -> None:
        self._monitor.finish()
