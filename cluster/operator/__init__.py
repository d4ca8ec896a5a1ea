"""`ingestor operator`: the autoscaler of `Ingestor` resources, a program apart from the node.

- `rules.py`: the autoscaler's rules (cluster.md), one pure function, no I/O and no clock;
- `controller.py`: the Kubernetes I/O: reads the world, asks the rules, applies the decision;
- `cli.py`: the `ingestor operator` command line.

It shares with the node only `cluster/annotations.py` (the scale-down handshake on a pod),
`cluster/kube.py` (reaching the API) and `cluster/units.py` (durations).
"""
