"""Events: what happens on this controller, as JSON objects naming it (`event_src_id`), for operators' tools.

    model.py    the event object (namespace, eventType, event_src_id, timestamp, id, fields)
    bus.py      EventBus: emit() never blocks; each subscription has a bounded queue (sinks drained on a thread of
                their own, GET /events clients pull); a history ring to resume from
    sinks.py    where a subscription writes: a JSON-lines file with size rotation, stdout
    webhook.py  POSTs of JSON arrays, HMAC-signed, retried with backoff, then dropped and counted
    setup.py    the bus a controller runs, from its `events:` configuration
    tail.py     `hactl events tail`: follows a node's GET /events (hactl/api/routes_events.py)
"""
