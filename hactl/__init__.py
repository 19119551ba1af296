"""hactl: a free, self-hosted, highly available network controller on Raft."""
