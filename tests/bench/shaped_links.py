"""Workers behind shaped links, for the benchmarks: N network namespaces, each joined to one
bridge in the root namespace by a veth pair whose two ends are limited with tc's token bucket
to RATE (the worker's download on the bridge side, its upload inside the namespace); the
bridge itself (what the root namespace, where a core runs, sends) is limited to CORE_RATE.
Workers reach each other and the core through the bridge. Needs root and iproute2.

    with ShapedLinks(4, "100mbit") as net:
        subprocess.Popen(net.exec_prefix(i) + ["gflex-node", "--join", f"{net.host}:7400"])
        net.worker_bytes()  # [(received, sent)] per worker since the links were made
"""
import os
import random
import subprocess


def _run(*cmd):
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def _counter(interface, what):
    with open(f"/sys/class/net/{interface}/statistics/{what}") as f:
        return int(f.read())


class ShapedLinks:
    def __init__(self, workers, rate, core_rate="1gbit"):
        self.workers, self.rate, self.core_rate = workers, rate, core_rate
        tag = f"{os.getpid() % 10000}{random.randrange(10)}"
        self.bridge = f"gfb{tag}"
        self.namespaces = [f"gfw{tag}-{i}" for i in range(workers)]
        self.host_ends = [f"gfh{tag}{i}" for i in range(workers)]
        self.net = f"10.{random.randrange(100, 250)}.{random.randrange(1, 250)}"
        self.host = f"{self.net}.1"

    # The worker's end of its link, inside its namespace (the same name in each).
    worker_interface = "gfn0"

    def worker_address(self, i):
        return f"{self.net}.{10 + i}"

    def exec_prefix(self, i):
        """The command prefix that runs a program in worker i's namespace."""
        return ["ip", "netns", "exec", self.namespaces[i]]

    def _shape(self, prefix, interface, rate):
        # A token bucket of RATE with a burst of 64 KiB and at most 100 ms of queue.
        _run(*prefix, "tc", "qdisc", "add", "dev", interface, "root", "tbf", "rate", rate,
             "burst", "64kb", "latency", "100ms")

    def __enter__(self):
        try:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            _run("ip", "addr", "add", f"{self.host}/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            self._shape([], self.bridge, self.core_rate)
            for i, (ns, host_end) in enumerate(zip(self.namespaces, self.host_ends)):
                inner = self.worker_interface
                _run("ip", "netns", "add", ns)
                _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", inner)
                _run("ip", "link", "set", inner, "netns", ns)
                _run("ip", "link", "set", host_end, "master", self.bridge)
                _run("ip", "link", "set", host_end, "up")
                _run("ip", "netns", "exec", ns, "ip", "addr", "add",
                     f"{self.worker_address(i)}/24", "dev", inner)
                _run("ip", "netns", "exec", ns, "ip", "link", "set", inner, "up")
                _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
                self._shape([], host_end, self.rate)                              # download
                self._shape(["ip", "netns", "exec", ns], inner, self.rate)        # upload
            self.start = [self._bytes(i) for i in range(self.workers)]
            return self
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def _bytes(self, i):
        # The bridge side's transmitted bytes are what the worker received, and the reverse.
        return (_counter(self.host_ends[i], "tx_bytes"), _counter(self.host_ends[i], "rx_bytes"))

    def worker_bytes(self):
        """(received, sent) by each worker since the links were made."""
        return [(r - r0, s - s0) for (r, s), (r0, s0) in
                zip((self._bytes(i) for i in range(self.workers)), self.start)]

    def mark(self):
        """Counts bytes from now on."""
        self.start = [self._bytes(i) for i in range(self.workers)]

    def __exit__(self, *exc):
        for host_end in self.host_ends:
            subprocess.run(["ip", "link", "del", host_end], capture_output=True)
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        return False
