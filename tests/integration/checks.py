"""Shared by the integration tests' inline Python: named checks that print ok/FAIL lines and
remember whether any failed."""
import sys

_ok = True


def check(cond, what):
    """Prints `what` as passed or failed; a failure is remembered for finish()."""
    global _ok
    print(("ok: " if cond else "FAIL: ") + what)
    _ok = _ok and bool(cond)


def finish():
    """Exits 0 if every check passed, 1 otherwise."""
    sys.exit(0 if _ok else 1)


def metrics_values(text):
    """A Prometheus text exposition as {'name{labels}': value}."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def fetch_metrics(address):
    """GET http://ADDRESS/metrics, parsed by metrics_values."""
    import urllib.request
    url = "http://" + address + "/metrics"
    return metrics_values(urllib.request.urlopen(url, timeout=10).read().decode())
