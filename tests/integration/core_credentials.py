"""Credentials of a test core, for the Python tests and benchmarks: `gflex-core init`, the
environment its nodes and clients read (GFLEX_CORE_CERT, GFLEX_API_KEY: the operator's),
and a join token (GFLEX_TOKEN) once the core answers."""

import os
import subprocess
import time


def init_core(bin_dir, data_dir):
    """Makes the core's credentials in data_dir; returns the environment for its nodes and
    clients (a copy of this process's, with the core's bundle and the operator's key)."""
    subprocess.run([f"{bin_dir}/gflex-core", "init", "--data-dir", data_dir], check=True,
                   stdout=subprocess.DEVNULL)
    env = dict(os.environ)
    env["GFLEX_CORE_CERT"] = os.path.join(data_dir, "core-cert.pem")
    with open(os.path.join(data_dir, "operator.key")) as f:
        env["GFLEX_API_KEY"] = f.read().strip()
    return env


def add_join_token(bin_dir, core, env, tier="core", limit_s=20):
    """Waits (limit_s at most) for the core at `core` to answer, then puts a new join token
    of `tier` into env as GFLEX_TOKEN."""
    deadline = time.time() + limit_s
    while True:
        r = subprocess.run([f"{bin_dir}/gflex-core", "token", "create", "--tier", tier,
                            "--core", core, "--log-level", "off"],
                           env=env, capture_output=True, text=True)
        if r.returncode == 0:
            env["GFLEX_TOKEN"] = r.stdout.strip()
            return
        if time.time() > deadline:
            raise RuntimeError(f"the core at {core} made no join token: {r.stderr.strip()}")
        time.sleep(0.2)
