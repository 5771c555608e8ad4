"""The job's own rendezvous and collectives listen on loopback only, on one host (issue: torch's TCPStore
listened on every interface, IPv4 and IPv6, and gloo on the machine's external address)."""

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

# One process plays the root of a rendezvous (Comms._rendezvous): it binds the store's socket, builds the
# TCPStore server on it, a gloo default group and a StatelessGroup, then reports its listening sockets.
CHILD = textwrap.dedent("""
    import json, os, sys
    import torch, torch.distributed as dist
    from asyncflow_hpc.topology.pg import StatelessGroup, bind_gloo_to, listen_socket, make_store
    bind_gloo_to("127.0.0.1")
    sock = listen_socket("127.0.0.1")
    store = make_store("127.0.0.1", sock.getsockname()[1], 1, sock=sock, timeout_s=30)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    t = torch.ones(4); dist.all_reduce(t)
    s2 = listen_socket("127.0.0.1")
    g = StatelessGroup((0,), 0, host="127.0.0.1", port=s2.getsockname()[1], backend="gloo", sock=s2)
    g.broadcast(torch.ones(4), 0).wait()
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                f = line.split()
                if f[3] == "0A" and f[9] in inodes:  # state LISTEN, owned by this process
                    listening.append(f[1])
    print(json.dumps(listening))
    dist.destroy_process_group()
""")


def _addr(hexaddr: str) -> str:
    ip, _, port = hexaddr.partition(":")
    if len(ip) == 8:
        b = bytes.fromhex(ip)[::-1]
        return ".".join(str(x) for x in b) + f":{int(port, 16)}"
    return ip + f":{int(port, 16)}"


def test_store_and_gloo_listen_on_loopback_only():
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("GLOO_SOCKET_IFNAME", None)
    p = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    import json

    listening = [_addr(a) for a in json.loads(p.stdout.strip().splitlines()[-1])]
    assert len(listening) >= 2, listening  # the store servers at least (gloo pairs may connect out instead)
    assert all(a.startswith("127.") for a in listening), listening
