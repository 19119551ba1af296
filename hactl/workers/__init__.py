"""API worker processes: a node serves its HTTP API from several processes, so that reads use every core.

    supervisor.py  the node's side: spawns `workers:` processes, answers their calls, restarts, stops them
    main.py        a worker process: serves the API on the node's port (SO_REUSEPORT) from ctrl.db read-only
    cluster.py     the worker's Cluster: its own LMDB reads; writes and read barriers are calls to the node
    proxy.py       node-state requests (/health, /status, /metrics, /events...) forwarded to the node's API
    messages.py    the node <-> worker link's messages (msgpack frames of hactl.agent.protocol)
    netconf.py     ZeroTier config replies the node dispatches to its workers to read and sign
    header.py      X-Hactl-Worker: which process answered

The node keeps serving the full API itself; the kernel spreads new connections over the node and its workers.
"""
