"""A core and node processes on loopback for the benchmarks: the nodes join the core tier
(trusted, so nothing is re-computed) with a core-tier token; the credentials and tokens come
from tests/integration/core_credentials.py. Every process is killed (SIGKILL) on leaving.

    with LocalCluster(bin_dir, f"{tmp}/run", nodes=4) as c:
        job = c.gflex("submit", spec_path)
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import core_credentials  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    def __init__(self, bin_dir, prefix, nodes, host="127.0.0.1", node_prefix=None, core_args=(),
                 core_log=None, core_log_level="warn"):
        """`host`: the address the core listens on; `node_prefix(i)`: a command prefix for
        node i (running it in a network namespace), or None; `core_args`: more flags for
        gflex-core; `core_log`: a file for the core's output (else this process's), at
        `core_log_level`."""
        self.bin, self.prefix, self.nodes = bin_dir, prefix, nodes
        self.core_args, self.core_log = list(core_args), core_log
        self.core_log_level = core_log_level
        self.core = f"{host}:{free_port()}"
        self.node_prefix = node_prefix or (lambda i: [])
        self.procs = []
        self.env = None

    def __enter__(self):
        try:
            self.env = core_credentials.init_core(self.bin, f"{self.prefix}-core")
            self.procs.append(subprocess.Popen(
                [f"{self.bin}/gflex-core", "--listen", self.core, "--data-dir",
                 f"{self.prefix}-core", "--log-level", self.core_log_level, *self.core_args],
                env=self.env,
                stdout=self.core_log, stderr=self.core_log))
            core_credentials.add_join_token(self.bin, self.core, self.env)
            for i in range(self.nodes):
                self.procs.append(subprocess.Popen(
                    [*self.node_prefix(i), f"{self.bin}/gflex-node", "--join", self.core, "--name", f"n{i}",
                     "--data-dir", f"{self.prefix}-n{i}", "--log-level", "warn", "--tier",
                     "core"], env=self.env))
            for _ in range(150):
                out = self.gflex("nodes", "--json", check=False)
                if out.strip() and len(json.loads(out)) == self.nodes:
                    break
                time.sleep(0.2)
            return self
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def gflex(self, *args, check=True):
        """Runs `gflex ARGS --core CORE` as the operator; returns its standard output."""
        return subprocess.run([f"{self.bin}/gflex", *args, "--core", self.core],
                              capture_output=True, text=True, check=check, env=self.env).stdout

    def status(self, job):
        return json.loads(self.gflex("status", job, "--json", check=False))

    def __exit__(self, *exc):
        for p in self.procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
        return False
