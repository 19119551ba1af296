"""One controller process, composed from the layers below (raft, fsm, snapshots, transport, api, agent).

    controller.py   the process: start-up (rebuild, raft node, mesh, API, agent), stop, exit codes
    writes.py       the write path: submit on the leader or forward to it, exactly-once, honest error answers
    health.py       /status's cluster object and /health
    fsm_adapter.py  raft's FSM over ctrl.db and the snapshot store (membership is applied into ctrl.db too)
    operations.py   operator commands behind the agent socket (membership, snapshot-db, restore-from-db)
    tokens.py       the API token file and its hash
"""
