"""Events: what happens on this controller, as JSON objects naming it (`event_src_id`), for operators' tools.

    model.py   the event object (namespace, eventType, event_src_id, timestamp, id, fields)
    bus.py     EventBus: emit() never blocks; each subscription has a bounded queue drained by its own task
    sinks.py   where a subscription writes: a JSON-lines file with size rotation, stdout
"""
