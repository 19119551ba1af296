"""The local agent: a unix socket served by each controller, and the CLI side that talks to it."""
