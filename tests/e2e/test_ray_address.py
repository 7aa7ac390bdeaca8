"""The Ray head a run starts for itself must stay findable by Ray's own helpers when another Ray
runs on the same machine (a second experiment, a sweep beside a run)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from helpers.cli import ROOT
from helpers.processes import kill_pids, with_descendants

# Ray Train's placement-group cleaner asks the state API whether the controller is alive, exactly so.
PROBE = r"""
import json, ray
from attn.config import load_config
from attn.distributed.lifecycle import start_ray

assert start_ray(load_config("experiments/mnist_ram.yaml"))

@ray.remote(num_cpus=0)
class Probe:
    def look(self, actor_id):
        import os
        from ray.train.v2._internal.state.util import is_actor_alive
        return os.environ.get("RAY_ADDRESS"), is_actor_alive(actor_id=actor_id, timeout=30)

p = Probe.remote()
seen, alive = ray.get(p.look.remote(p._actor_id.hex()))
print(json.dumps({"gcs": ray.get_runtime_context().gcs_address, "seen": seen, "alive": alive}))
ray.shutdown()
"""

OTHER = "import ray, time; ray.init(num_cpus=0); print('up', flush=True); time.sleep(600)"


def test_a_started_head_is_found_by_its_actors_beside_another_ray():
    # Without RAY_ADDRESS the state API fails with "Found multiple active Ray instances": the cleaner's
    # thread dies, and a stopped trial's placement group stays reserved (the next trial never starts).
    other = subprocess.Popen([sys.executable, "-c", OTHER], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert other.stdout.readline().strip() == "up"
        proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        assert got["alive"] is True and got["seen"] == got["gcs"], got
    finally:
        # Its Ray (GCS, raylet, the raylet's agents) is read before the driver stops: a driver killed
        # after a slow shutdown would leave the agents to outlive it.
        tree = with_descendants([other.pid])
        other.send_signal(signal.SIGINT)
        try:
            other.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        kill_pids(with_descendants(tree))
        other.wait()
