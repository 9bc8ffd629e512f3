"""launch/slurm_multinode.sbatch as a cluster runs it, on two nodes simulated on this machine.

The batch script runs as written (`bash launch/slurm_multinode.sbatch align/sft.py ...` from
the repository root, with the variables sbatch sets), with the stand-ins for `srun` and
`scontrol` in tests/slurm/ first on the PATH. Each node is a network namespace of its own
(`ip netns`, so root only), joined to the other by a veth pair whose addresses exist only inside
the two namespaces, with its own hostname (a UTS namespace) and its own /etc/hosts
(/etc/netns/<node>/hosts, which `ip netns exec` mounts over /etc/hosts). So `localhost` on a node
is that node alone: a rendezvous that does not name the first node waits for a peer that never
comes, as on a cluster, instead of meeting the other node on a loopback they share. One process
per node (GPUS_PER_NODE=1), gloo.
"""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STAND_INS = REPO / "tests" / "slurm"
NETNS_ETC = Path("/etc/netns")


@dataclass(frozen=True)
class Cluster:
    nodes: list[str]  # node names: each also its network namespace and its hostname
    nodelist: str  # as SLURM writes it: prefix[0-1]
    addresses: dict[str, str]

    def job_env(self, job_id: str, **extra: str) -> dict[str, str]:
        """The environment of a batch job on this cluster, as sbatch sets it (one task and one
        GPU per node), with the stand-ins and this Python's scripts (accelerate) on the PATH."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("SLURM_") and k not in ("ALIGN_RUN_ID", "ACCELERATE_CONFIG")}
        env.update(
            PATH=os.pathsep.join([str(STAND_INS), str(Path(sys.executable).parent), env["PATH"]]),
            SLURM_JOB_ID=job_id, SLURM_JOBID=job_id, SLURM_JOB_NAME="align",
            SLURM_JOB_NODELIST=self.nodelist, SLURM_NODELIST=self.nodelist,
            SLURM_NNODES=str(len(self.nodes)), SLURM_JOB_NUM_NODES=str(len(self.nodes)),
            SLURM_NTASKS_PER_NODE="1", SLURM_GPUS_ON_NODE="1", SLURM_GPUS_PER_NODE="1",
            SLURM_SUBMIT_DIR=str(REPO), SLURM_SUBMIT_HOST=self.nodes[0],
            OMP_NUM_THREADS="1", **extra)
        return env


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=False, capture_output=True, text=True)


def _checked_ip(*args: str) -> None:
    done = _ip(*args)
    if done.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@pytest.fixture
def cluster():
    """Two nodes, each a network namespace; everything made here is removed afterwards, the
    processes left in the namespaces included, also when the test fails."""
    if os.geteuid() != 0:
        pytest.skip("simulated nodes are network namespaces: `ip netns` needs root")
    for tool in ("ip", "unshare", "hostname"):
        if shutil.which(tool) is None:
            pytest.skip(f"simulated nodes need `{tool}` (iproute2, util-linux)")
    prefix = f"alignmn{secrets.token_hex(3)}-"
    nodes = [f"{prefix}{i}" for i in range(2)]
    addresses = {node: f"10.231.0.{i + 1}" for i, node in enumerate(nodes)}
    made_etc = not NETNS_ETC.exists()
    made: list[str] = []
    try:
        for node in nodes:
            added = _ip("netns", "add", node)
            if added.returncode:
                pytest.skip(f"`ip netns add` is not available here: {added.stderr.strip()}")
            made.append(node)
        # One cable between the two nodes; both ends are created inside the namespaces.
        cable = _ip("-n", nodes[0], "link", "add", "eth0", "type", "veth",
                    "peer", "name", "eth0", "netns", nodes[1])
        if cable.returncode:
            pytest.skip(f"no veth pair between network namespaces here: {cable.stderr.strip()}")
        hosts = "127.0.0.1 localhost\n::1 localhost\n" + "".join(
            f"{address} {node}\n" for node, address in addresses.items())
        for node in nodes:
            _checked_ip("-n", node, "addr", "add", f"{addresses[node]}/24", "dev", "eth0")
            _checked_ip("-n", node, "link", "set", "eth0", "up")
            _checked_ip("-n", node, "link", "set", "lo", "up")
            (NETNS_ETC / node).mkdir(parents=True)
            (NETNS_ETC / node / "hosts").write_text(hosts)
        yield Cluster(nodes, f"{prefix}[0-{len(nodes) - 1}]", addresses)
    finally:
        for node in made:
            for _ in range(10):  # a process may fork while the others are killed
                pids = _ip("netns", "pids", node).stdout.split()
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            _ip("netns", "del", node)  # also removes the veth pair
            shutil.rmtree(NETNS_ETC / node, ignore_errors=True)
        if made_etc:
            try:
                NETNS_ETC.rmdir()
            except OSError:
                pass


def srun(cluster, *command, timeout=120):
    return subprocess.run([str(STAND_INS / "srun"), "--kill-on-bad-exit=1", *command],
                          check=False, env=cluster.job_env("7"), capture_output=True, text=True,
                          timeout=timeout)


def test_simulated_nodes_are_separate_hosts(cluster):
    """Each task runs on its node: its hostname, its SLURM variables, and its own loopback. The
    second node reaches the first at its name, and finds nobody at localhost on the same port
    (a shared loopback would have answered)."""
    probe = textwrap.dedent("""
        import os, socket, sys, time
        node, rank = os.environ["SLURM_NODEID"], os.environ["SLURM_PROCID"]
        first = sys.argv[1]
        result = [socket.gethostname(), os.environ["SLURMD_NODENAME"], node, rank,
                  socket.gethostbyname(socket.gethostname()), sys.argv[2]]
        if node == "0":
            server = socket.create_server(("", 29500))
            conn, _ = server.accept()
            conn.recv(1)
        else:
            for _ in range(200):
                try:
                    conn = socket.create_connection((first, 29500))
                    break
                except ConnectionRefusedError:
                    time.sleep(0.1)
            try:
                socket.create_connection(("localhost", 29500)).close()
                result.append("localhost answered")
            except ConnectionRefusedError:
                result.append("localhost refused")
            conn.close()
        print(" ".join(result))
    """)
    done = srun(cluster, sys.executable, "-c", probe, cluster.nodes[0], "an 'argument' intact")
    assert done.returncode == 0, done.stderr
    lines = sorted(done.stdout.splitlines())
    first, second = cluster.nodes
    assert lines == [
        f"{first} {first} 0 0 {cluster.addresses[first]} an 'argument' intact",
        f"{second} {second} 1 1 {cluster.addresses[second]} an 'argument' intact localhost refused",
    ]


def test_srun_stand_in_ends_the_step_on_a_bad_exit(cluster):
    """--kill-on-bad-exit: the task that fails ends the others; srun exits with the highest
    status of its tasks."""
    done = srun(cluster, "sh", "-c", 'if [ "$SLURM_NODEID" = 1 ]; then exit 3; fi; exec sleep 600')
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert f"{cluster.nodes[1]}: task 1: exited with exit code 3" in done.stderr



def test_srun_stand_in_passes_a_signal_to_every_task(cluster, tmp_path):
    """SIGTERM to srun (a scheduler pre-empting the job) reaches the task on every node."""
    body = (f'trap \'echo "$SLURM_NODEID got TERM"; exit 0\' TERM; touch "{tmp_path}/$SLURM_NODEID"; '
            'while :; do sleep 0.1; done')
    proc = subprocess.Popen([str(STAND_INS / "srun"), "bash", "-c", body], env=cluster.job_env("8"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            if (tmp_path / "0").exists() and (tmp_path / "1").exists():
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert sorted(out.splitlines()) == ["0 got TERM", "1 got TERM"]


QUICK = ["logger=none", "model=tiny_sft", "peft=none", "trainer.max_steps=2",
         "trainer.save_steps=1", "trainer.logging_steps=1", "heldout.max_samples=8",
         "trainer.per_device_train_batch_size=8"]
STAGE = {"sft": [], "grpo": ["trainer.num_generations=4"]}
#: Preempts the first start at the end of step 1 (rank 0 gets SIGTERM; align shares it with
#: every rank, saves checkpoint-1 and exits 143); a no-op on the requeued start, which runs
#: without the variable.
PREEMPT = "callbacks=[tests.test_lifecycle:SignalAtStep]"


def sbatch(job_env, stage, overrides, timeout=900):
    """`bash launch/slurm_multinode.sbatch align/<stage>.py ...` from the repository root, as
    the batch step of a job runs it; (exit status, its output). Past the timeout the whole job
    is killed (the tasks left in the nodes' namespaces go with the cluster)."""
    proc = subprocess.Popen(["bash", "launch/slurm_multinode.sbatch", f"align/{stage}.py", *overrides],
                            cwd=REPO, env=job_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"the job did not end in {timeout} s:\n{log[-6000:]}")
    return proc.returncode, log


@pytest.mark.slow
@pytest.mark.parametrize("config,stage", [("ddp.yaml", "sft"), ("zero2.yaml", "grpo"),
                                          ("zero3.yaml", "sft")])
def test_sbatch_trains_on_two_nodes_and_continues_after_a_requeue(cluster, config, stage, tmp_path):
    """The job trains on both nodes into one run folder, the overrides arrive as typed (a name
    holding a quote and a space, a run folder holding a space), and a requeued start (same job
    id, `resume=true` among the same overrides) continues from the checkpoint of the first."""
    if config.startswith("zero"):
        pytest.importorskip("deepspeed", reason="the `deepspeed` extra")
    runs = tmp_path / "run dir"
    overrides = [*QUICK, *STAGE[stage], PREEMPT, "resume=true", "name=\"it's a run\"",
                 f"hydra.run.dir='{runs}/${{name}}/${{align_run_id:}}'"]
    env = {"ACCELERATE_CONFIG": f"launch/{config}", "PYTHONPATH": str(REPO)}

    wrote_env = (REPO / ".deepspeed_env").exists()
    status, log = sbatch(cluster.job_env("4242", **env, ALIGN_TEST_SIGNAL_AT_STEP="1:SIGTERM:0"),
                         stage, overrides)
    # The ranks exit 143; torchrun reports a failed worker as 1.
    assert status != 0 and "error: stopped by SIGTERM at step 1" in log, log[-6000:]
    folders = list((runs / "it's a run").iterdir())
    assert [f.name for f in folders] == ["slurm-4242"], log[-3000:]
    folder = folders[0]
    assert (folder / "checkpoint-1" / "trainer_state.json").exists(), log[-3000:]
    assert not (folder / "final").exists()

    # The requeue: the same job id and overrides, SLURM counting the restart.
    status, log = sbatch(cluster.job_env("4242", **env, SLURM_RESTART_COUNT="1"),
                         stage, overrides)
    assert status == 0, log[-6000:]
    assert f"resume=true: continuing from {folder / 'checkpoint-1'}" in log
    assert [f.name for f in (runs / "it's a run").iterdir()] == ["slurm-4242"]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 2 and metrics["world_size"] == 2
    assert "heldout_after" in metrics
    # accelerate's pdsh route writes the whole environment (tokens included) to the submit
    # folder, for ssh to carry to the other nodes; srun carries it instead.
    assert wrote_env or not (REPO / ".deepspeed_env").exists()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder / "final")
    assert all(p.numel() > 0 for p in model.parameters())
