"""``herd lab``: a herd on real (virtual) hosts with real network faults.

Each host is a network namespace with its own address on one bridge, its own
``redis-server`` at 127.0.0.1:6400 and its node at ``10.77.0.<n>``: exactly
the documented multi-host layout, one config for every host. An observer
namespace on the same bridge runs the load and ``herd status``/``herd
check``. Faults are nftables rules inside the hosts, signals to their
processes, and a node clock offset. docs/LAB.md describes it all.

Modules: ``plan`` (pure: names, addresses, topologies, the config),
``rules`` (pure: nftables scripts of each fault), ``netns`` (namespaces,
veths, the bridge, sockets inside a namespace, clean-up), ``hosts`` (the
lab: processes per host and what is read from them), ``load`` (IAMAT load
and propagation probes from the observer), ``chaos`` and ``scale`` (the
runs), ``command`` (the ``herd lab`` command line).
"""
