"""Multi-node DDP: two torchrun agents, one process each, meeting by c10d rendezvous on 127.0.0.1.

The launch is the README's multi-node command with --nnodes 2; the agents stand in for two
machines. Each process trains one SGD step on half of the global batch (gloo on CPU); the
weights must equal those of one process stepping on the whole batch.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from tiny import assert_same_updates, initial_state, step_recipe, tiny_method, updates

NODES = 2
LOCAL_BATCH = 4
WORKER = Path(__file__).with_name("multinode_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_agent(node_rank: int, port: int, arguments: list[str], log: Path) -> subprocess.Popen:
    """One torchrun agent of the rendezvous, as each machine of a cluster would start it."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        str(NODES),
        "--nproc-per-node",
        "1",
        "--node-rank",
        str(node_rank),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "--rdzv-id",
        "medssl-multinode-test",
        "--local-addr",
        "127.0.0.1",
        "--max-restarts",
        "0",
        "--rdzv-conf",
        "join_timeout=60",
        str(WORKER),
        *arguments,
    ]
    # The checkout first: the workers import this medssl, whatever is installed.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("WORLD_SIZE", None)
    return subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def run_two_nodes(cohort: str, out: Path, logs: Path) -> None:
    port = free_port()
    agents = [
        torchrun_agent(rank, port, [cohort, str(out), str(LOCAL_BATCH)], logs / f"node{rank}.log")
        for rank in range(NODES)
    ]
    try:
        codes = [agent.wait(timeout=120) for agent in agents]
    except subprocess.TimeoutExpired:
        codes = None
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    report = "\n".join(f"--- node {rank}\n{(logs / f'node{rank}.log').read_text()[-3000:]}" for rank in range(NODES))
    assert codes == [0] * NODES, report


def test_two_torchrun_agents_end_with_the_weights_of_one_process_on_the_global_batch(
    tiny_cohort, tmp_path, monkeypatch
):
    from medssl.train.pretraining import train_encoder

    run_two_nodes(str(tiny_cohort), tmp_path / "two_nodes", tmp_path)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    torch.manual_seed(0)  # the weights a recipe of seed 0 starts from (tiny.initial_state)
    train_encoder(step_recipe(str(tiny_cohort), NODES * LOCAL_BATCH), tmp_path / "single", method=tiny_method(None))

    def trained(run: Path) -> dict:
        checkpoint = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
        assert checkpoint["epochs_done"] == 1
        return updates(checkpoint["method"], initial_state())

    assert_same_updates(trained(tmp_path / "two_nodes"), trained(tmp_path / "single"))
